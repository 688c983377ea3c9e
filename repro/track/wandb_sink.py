"""Weights & Biases sink: the same config and numbers as the run store, offline without an API key.

W&B is a mirror, never the record: any W&B error is reported once and switches the sink off, so
the run and its local run store carry on unharmed.
"""
from __future__ import annotations

import netrc
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from repro.util import option, register_schema

WANDB_MODES = ("auto", "online", "offline", "disabled")
LOGGERS = ("wandb", "none")


@dataclass
class LoggerConfig:
    """The `logger` config group's schema (conf/logger/wandb.yaml documents it)."""
    name: str = option(choices=LOGGERS)
    project: str = option("rmsnorm-repro")
    entity: Optional[str] = option(None)
    run_name: Optional[str] = option(None)
    mode: str = option("auto", choices=WANDB_MODES)
    group: Optional[str] = option(None)
    job_type: str = option("train")
    tags: list = option(default_factory=list)



register_schema("logger", "logger_schema", LoggerConfig)
def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """"auto": online with an API key configured, else offline (upload later with `wandb sync`)."""
    if os.environ.get("WANDB_MODE") and mode == "auto":
        return os.environ["WANDB_MODE"]
    return ("online" if _has_api_key() else "offline") if mode == "auto" else mode


class WandbSink:
    def __init__(
        self, run_dir, *, config: dict, project: str, entity: Optional[str], group: Optional[str],
        tags: list[str], job_type: str, name: Optional[str], mode: str,
    ):
        self.run = None
        # A resumed run continues the same W&B run: its id is kept in the run directory.
        id_file = Path(run_dir) / "wandb_id.txt"
        try:
            import wandb

            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id + "\n")
            self.run = wandb.init(
                project=project, entity=entity, group=group, tags=tags, job_type=job_type, name=name,
                config=config, dir=str(run_dir), mode=resolve_mode(mode), id=run_id, resume="allow",
                reinit="finish_previous",
            )
        except Exception as error:  # noqa: BLE001 - any W&B failure must leave the run going
            self._fail("init", error)

    def _fail(self, what: str, error: Exception) -> None:
        warnings.warn(f"W&B {what} failed, continuing with the local run store only: {error!r}")
        self.run = None

    def log(self, step: int, split: str, metrics: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.log({k: float(v) for k, v in metrics.items() if v is not None}, step=step)
        except Exception as error:  # noqa: BLE001
            self._fail("log", error)

    def update_summary(self, **entries) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update({k: v for k, v in entries.items() if isinstance(v, (int, float, str))})
        except Exception as error:  # noqa: BLE001
            self._fail("summary", error)

    def finish(self, exit_code: int) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as error:  # noqa: BLE001
            self._fail("finish", error)
        self.run = None
