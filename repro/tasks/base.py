"""The Task interface: everything problem-specific that the one shared trainer must not know.

The trainer (repro.train) drives any Task through these members only:

- `setup(device, rank, world_size)`: load data onto `device`; called once before training, after
  the model exists (so a bad norm/model config fails before any data is read).
- `build_model(norm) -> nn.Module`: the model, given a `repro.nn.NormFactory` ("a norm").
- `train_batches() -> Batches`: the training stream of this rank. A `Batches` object has
  `len()` (micro-batches per epoch) and `iter_epoch(epoch, start)` yielding micro-batches from
  index `start` on, the same every time for the same (seed, epoch). The trainer stores only
  (epoch, index) in checkpoints, so resuming reproduces the data order exactly; with DDP each
  rank's object yields its share of every global batch.
- `loss(model, batch) -> (loss, n_items, logs)`: mean loss over the micro-batch, the number of
  items it averages over (images; target tokens for translation), and extra scalars to log
  (name -> float or 0-d tensor, e.g. {"train/acc": ...}). The trainer weights micro-batches and
  ranks by n_items, so token-batched tasks with unequal batch sizes average correctly, and
  reports `throughput/{throughput_unit}_per_s` from the summed n_items.
- `evaluate(model, split) -> dict`: metrics of `split` with names as in docs/DESIGN.md
  ("val/loss", "val/acc", "test/bleu", ...); the model arrives in eval mode, without DDP, under
  torch.no_grad. It may do anything a split needs: a CIFAR task classifies, a translation task
  decodes with beam search and scores with sacreBLEU. Under DDP every rank calls it: each works
  on its share and the results are gathered (repro.tasks.sharding), so each rank returns the
  numbers one process would.
- `eval_splits`: the splits evaluated every `trainer.eval_every` steps and at the end.
- `monitor`: (metric, "max" | "min") on a validation split that selects `checkpoints/best.pt`;
  None where the task has no validation split (no best.pt, no best/* metrics: never select on test).
- `throughput_unit`: "images", "tokens", ...
- `name`: the task's config name (W&B tags, run-store summary).
- `initialize(model)`: once before the first step of a fresh run, never on resume (data-dependent
  init); a no-op by default.
- `check_options(cfg, world_size)` (a classmethod): raise repro.util.ConfigError, one line, on
  the first bad option of the groups the task reads (`data`; `decode` for translation), before
  anything is built. The task owns its options; repro.train calls this on the class
  `task._target_` names and knows no particular task.

A translation task (token batching, BLEU, tokens/s) implements the same members; the trainer
does not change.
"""
from __future__ import annotations

import abc
from typing import Any, Iterator, Mapping, Optional, Protocol

import torch
from torch import Tensor, nn

from repro.nn import NormFactory
from repro.util import ConfigError, check_options
from repro.util.schema import Rule, check_value


class Batches(Protocol):
    def __len__(self) -> int: ...

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[Any]: ...


class Task(abc.ABC):
    name: str
    throughput_unit: str
    eval_splits: tuple[str, ...]
    monitor: Optional[tuple[str, str]]
    options: Optional[type] = None  # the data group's schema (a repro.util.schema dataclass)

    @classmethod
    def check_options(cls, cfg: Mapping, world_size: int = 1) -> None:
        """Check the `data` group of the composed config `cfg` against `options`; every task
        batches, and a global batch splits evenly over the processes."""
        if "data" not in cfg:
            raise ConfigError("data is missing from the config")
        data = cfg["data"]
        batch_size = data.get("batch_size", "<absent>")
        check_value("data.batch_size", batch_size, int, Rule(minimum=1))
        if batch_size % world_size:
            raise ConfigError(
                f"data.batch_size={batch_size} is not allowed: must be a multiple of trainer.devices={world_size}"
            )
        if cls.options is not None:
            check_options(data, cls.options, "data")

    @abc.abstractmethod
    def build_model(self, norm: NormFactory) -> nn.Module: ...

    @abc.abstractmethod
    def setup(self, device: torch.device, rank: int = 0, world_size: int = 1) -> None: ...

    @abc.abstractmethod
    def train_batches(self) -> Batches: ...

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, int, dict]: ...

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]: ...

    def initialize(self, model: nn.Module) -> None:
        """Called once before the first step of a fresh run (never on resume), after `setup`:
        initialization that needs the data (e.g. data-dependent init); nothing by default."""

    def summary_extras(self) -> dict:
        """Facts about the evaluation that belong in summary.json beside the numbers (e.g. the
        sacreBLEU signature), after the final evaluation; none by default."""
        return {}
