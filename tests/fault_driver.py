"""Start a smoke training run and SIGKILL it at a chosen point: the fault-injection tests' driver.

    python tests/fault_driver.py POINT N DATA_ROOT RUN_DIR [OVERRIDE ...]

POINT (the Nth time it is reached, counted from 1):
  step        inside a training step (the Nth training loss, after the forward pass)
  eval        inside an evaluation (the Nth call of the task's evaluate)
  checkpoint  between writing last.pt's temporary file and renaming it over last.pt (the Nth time)
  metrics     half-way through writing the Nth metrics.jsonl line (flushed, then killed)

kill -9 gives the process no chance to clean up, as a real OOM kill or power cut would not; the
tests then rerun the same run directory and compare with an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import torch

from repro.tasks import CifarClassification
from repro.track import RunStore
from repro.train import train
from train_helpers import smoke_config

POINTS = ("step", "eval", "checkpoint", "metrics")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, n: int) -> None:
    calls = [0]

    def due() -> bool:
        calls[0] += 1
        return calls[0] == n

    if point == "step":
        real_loss = CifarClassification.loss

        def loss(self, model, batch):
            result = real_loss(self, model, batch)
            if due():
                die()
            return result
        CifarClassification.loss = loss
    elif point == "eval":
        real_evaluate = CifarClassification.evaluate

        def evaluate(self, model, split):
            if due():
                die()
            return real_evaluate(self, model, split)
        CifarClassification.evaluate = evaluate
    elif point == "checkpoint":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if os.path.basename(dst) == "last.pt" and due():
                die()  # the temporary file is complete and fsynced; the rename never happens
            return real_replace(src, dst, *args, **kwargs)
        os.replace = replace
    elif point == "metrics":
        real_log = RunStore.log

        def log(self, step, split, metrics):
            if due():
                line = json.dumps({"step": step, "split": split, **metrics}, default=float)
                self._metrics.write(line[: len(line) // 2])
                self._metrics.flush()
                die()
            return real_log(self, step, split, metrics)
        RunStore.log = log
    else:
        raise SystemExit(f"POINT must be one of {', '.join(POINTS)}, got {point!r}")


def main() -> None:
    point, n, data_root, run_dir, *overrides = sys.argv[1:]
    torch.set_num_threads(1)  # as the tests' in-process runs: the same arithmetic, bit for bit
    arm(point, int(n))
    train(smoke_config(data_root, *overrides), run_dir)
    raise SystemExit(f"the run finished without reaching {point} #{n}")


if __name__ == "__main__":
    main()
