"""One front for the trainer: every record goes to the run store and, when enabled, to W&B."""
from __future__ import annotations

from typing import Optional

from .run_store import RunStore
from .wandb_sink import WandbSink


class Tracker:
    def __init__(self, store: RunStore, wandb: Optional[WandbSink] = None):
        self.store, self.wandb = store, wandb
        self.sinks = [store] + ([wandb] if wandb is not None else [])

    def log(self, step: int, split: str, metrics: dict) -> None:
        for sink in self.sinks:
            sink.log(step, split, metrics)

    def update_summary(self, **entries) -> None:
        for sink in self.sinks:
            sink.update_summary(**entries)

    def finish(self, status: str) -> None:
        """Close every sink; W&B's finish runs whatever the status, so sweeps never merge runs."""
        try:
            try:
                self.update_summary(status=status)
            finally:
                self.store.close()
        finally:
            if self.wandb is not None:
                self.wandb.finish(exit_code=0 if status == "completed" else 1)
