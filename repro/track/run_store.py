"""The local run store: config.yaml, metrics.jsonl and summary.json in the run directory.

It is always written, by rank 0 only, and flushed as it goes: every metrics line is flushed
when logged and summary.json is replaced atomically whenever it changes, so a crash at any point
leaves readable files describing everything up to that point. The one thing a kill can leave is
a torn last metrics line (killed mid-write): readers skip it with a warning, and a resumed run
drops it before appending. A write that fails (a full disk) is a StorageError naming the file.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from repro.util import StorageError, atomic_write, write_json_atomic


def _jsonable(value):
    value = float(value) if hasattr(value, "item") else value
    # JSON has no NaN/inf; null keeps the line parseable and the diverged step visible.
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _write_failed(path: Path, error: OSError) -> StorageError:
    return StorageError(f"cannot write {path}: {error.strerror or error}; what was written before is intact. "
                        f"Free space, then rerun the same run directory to resume")


class RunStore:
    def __init__(self, run_dir, *, resume_step: Optional[int] = None):
        """Open the store in `run_dir`. `resume_step`: a run resumed from a checkpoint at that step
        keeps only the metrics lines up to it, so re-done steps are not logged twice."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.summary_path = self.run_dir / "summary.json"
        if resume_step is not None and self.metrics_path.exists():
            kept = [row for row in read_metrics(self.run_dir) if row["step"] <= resume_step]
            try:
                with atomic_write(self.metrics_path) as f:
                    f.write("".join(json.dumps(row) + "\n" for row in kept))
            except OSError as error:
                raise _write_failed(self.metrics_path, error) from error
        elif resume_step is None:
            self.metrics_path.unlink(missing_ok=True)
        self._metrics = open(self.metrics_path, "a")
        resumed = resume_step is not None and self.summary_path.exists()
        self.summary: dict = json.loads(self.summary_path.read_text()) if resumed else {}

    def write_config(self, config: dict) -> None:
        try:
            with atomic_write(self.run_dir / "config.yaml") as f:
                f.write(OmegaConf.to_yaml(OmegaConf.create(config)))
        except OSError as error:
            raise _write_failed(self.run_dir / "config.yaml", error) from error

    def log(self, step: int, split: str, metrics: dict) -> None:
        row = {"step": step, "split": split, **{k: _jsonable(v) for k, v in metrics.items()}}
        try:
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()
        except OSError as error:
            raise _write_failed(self.metrics_path, error) from error

    def update_summary(self, **entries) -> None:
        self.summary.update({k: _jsonable(v) if not isinstance(v, dict) else v for k, v in entries.items()})
        try:
            write_json_atomic(self.summary_path, self.summary)
        except OSError as error:
            raise _write_failed(self.summary_path, error) from error

    def close(self) -> None:
        if self._metrics.closed:
            return
        try:
            self._metrics.flush()
            os.fsync(self._metrics.fileno())
        except OSError as error:  # a full disk: the lines already flushed stay readable
            raise _write_failed(self.metrics_path, error) from error
        finally:
            try:
                self._metrics.close()
            except OSError:
                pass  # its buffered bytes could not be written; reported above


def read_metrics(run_dir) -> list[dict]:
    """The rows of a run's metrics.jsonl, in order. A torn last line (the writer was killed
    mid-line) is skipped with a warning; an unreadable line before it is a StorageError."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("not a metrics row")
        except ValueError:
            if number == len(lines):
                warnings.warn(f"{path}: skipped the torn last line {number} (its writer was interrupted)",
                              stacklevel=2)
                break
            raise StorageError(f"{path} line {number} is not a metrics row: {line[:80]!r}") from None
        rows.append(row)
    return rows
