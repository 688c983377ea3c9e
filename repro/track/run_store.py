"""The local run store: config.yaml, metrics.jsonl and summary.json in the run directory.

It is always written, by rank 0 only, and flushed as it goes: every metrics line is flushed
when logged and summary.json is replaced atomically whenever it changes, so a crash at any point
leaves readable files describing everything up to that point.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from repro.util import atomic_write, write_json_atomic


def _jsonable(value):
    value = float(value) if hasattr(value, "item") else value
    # JSON has no NaN/inf; null keeps the line parseable and the diverged step visible.
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunStore:
    def __init__(self, run_dir, *, resume_step: Optional[int] = None):
        """Open the store in `run_dir`. `resume_step`: a run resumed from a checkpoint at that step
        keeps only the metrics lines up to it, so re-done steps are not logged twice."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.summary_path = self.run_dir / "summary.json"
        if resume_step is not None and self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            with atomic_write(self.metrics_path) as f:
                f.write("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.metrics_path.unlink(missing_ok=True)
        self._metrics = open(self.metrics_path, "a")
        resumed = resume_step is not None and self.summary_path.exists()
        self.summary: dict = json.loads(self.summary_path.read_text()) if resumed else {}

    def write_config(self, config: dict) -> None:
        with atomic_write(self.run_dir / "config.yaml") as f:
            f.write(OmegaConf.to_yaml(OmegaConf.create(config)))

    def log(self, step: int, split: str, metrics: dict) -> None:
        row = {"step": step, "split": split, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()

    def update_summary(self, **entries) -> None:
        self.summary.update({k: _jsonable(v) if not isinstance(v, dict) else v for k, v in entries.items()})
        write_json_atomic(self.summary_path, self.summary)

    def close(self) -> None:
        if not self._metrics.closed:
            self._metrics.flush()
            os.fsync(self._metrics.fileno())
            self._metrics.close()


def read_metrics(run_dir) -> list[dict]:
    """The rows of a run's metrics.jsonl, in order."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
