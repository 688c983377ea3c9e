"""CIFAR-10 image classification (ConvPool-CNN-C, ViT): data in device memory, cross-entropy, accuracy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from repro.data import ImageBatches, load_cifar10, prepare_cifar10
from repro.data.cifar10 import PREPROCESS
from repro.nn import NORMS, NormFactory, data_dependent_init
from repro.util import ConfigError, option, register_schema

from .base import Task
from .sharding import my_share, sum_over_ranks


@dataclass
class CifarOptions:
    """The image tasks' `data` group (conf/data/cifar10.yaml documents each option)."""
    root: str = option()
    cache_dir: Optional[str] = option(None)
    download: bool = option(True)
    batch_size: int = option(100, minimum=1)
    eval_batch_size: int = option(1000, minimum=1)
    val_size: int = option(0, minimum=0)
    preprocess: str = option("standardize", choices=PREPROCESS)
    zca_eps: float = option(1e-5, minimum=0, strict=True)
    crop_padding: int = option(4, minimum=0)
    flip: bool = option(True)
    data_init: bool = option(False)
    data_init_size: int = option(500, minimum=1)



register_schema("data", "cifar10_schema", CifarOptions)
class CifarClassification(Task):
    throughput_unit = "images"
    options = CifarOptions

    @classmethod
    def check_options(cls, cfg, world_size: int = 1) -> None:
        super().check_options(cfg, world_size)
        if cfg.get("decode") is not None:
            raise ConfigError("decode is not allowed for an image task: must be null (images are classified)")
        norm = (cfg.get("norm") or {}).get("name")
        if cfg["data"].get("data_init") and norm in NORMS and not NORMS[norm].is_identity:
            allowed = ", ".join(n for n, spec in NORMS.items() if spec.is_identity)
            raise ConfigError(f"data.data_init=true is not allowed with norm={norm}: only with a norm in ({allowed}), "
                              "whose layers keep their bias")

    def __init__(
        self, name: str, model: Callable[..., nn.Module], *, root: str, cache_dir: Optional[str] = None,
        download: bool = True, batch_size: int = 100, eval_batch_size: int = 1000, val_size: int = 0,
        preprocess: str = "standardize", zca_eps: float = 1e-5, crop_padding: int = 4, flip: bool = True,
        data_init: bool = False, data_init_size: int = 500, seed: int = 0,
    ):
        self.name, self.make_model = name, model
        self.root, self.cache_dir, self.download = root, cache_dir, download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.preprocess, self.zca_eps = val_size, preprocess, zca_eps
        self.crop_padding, self.flip, self.seed = crop_padding, flip, seed
        self.data_init, self.data_init_size = data_init, data_init_size
        self.eval_splits = ("val", "test") if val_size else ("test",)
        # Without a validation split (the paper trains on all 50k images) nothing selects a
        # checkpoint: picking the best by test accuracy would be model selection on the test set.
        self.monitor = ("val/acc", "max") if val_size else None
        self.splits = None

    def build_model(self, norm: NormFactory) -> nn.Module:
        return self.make_model(norm=norm)

    def setup(self, device, rank: int = 0, world_size: int = 1) -> None:
        raw = load_cifar10(self.root, self.cache_dir, self.download)
        self.splits = prepare_cifar10(
            raw, val_size=self.val_size, preprocess=self.preprocess, zca_eps=self.zca_eps, device=device
        )
        images, labels = self.splits.train
        self._train = ImageBatches(
            images, labels, self.batch_size, shuffle=True, seed=self.seed, crop_padding=self.crop_padding,
            flip=self.flip, rank=rank, world_size=world_size,
        )

    def initialize(self, model: nn.Module) -> None:
        """With `data_init`: Salimans & Kingma's data-dependent init (repro.nn.init) on the first
        `data_init_size` images of epoch 0's shuffled order, as their code uses the first 500."""
        if not self.data_init:
            return
        images, labels = self.splits.train
        init_batch = ImageBatches(
            images, labels, min(self.data_init_size, len(images)), shuffle=True, seed=self.seed,
            crop_padding=self.crop_padding, flip=self.flip,
        )
        data_dependent_init(model, next(init_batch.iter_epoch(0))[0])

    def train_batches(self) -> ImageBatches:
        return self._train

    def loss(self, model: nn.Module, batch):
        images, labels = batch
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.argmax(1) == labels).float().mean()
        return loss, len(labels), {"train/acc": accuracy.detach()}

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        images, labels = getattr(self.splits, split)
        # [loss sum, correct] over this rank's batches, then summed over ranks (sharding.py)
        totals = torch.zeros(2, device=images.device, dtype=torch.float64)
        starts = my_share(range(0, len(labels), self.eval_batch_size))
        for start in starts:
            x, y = images[start:start + self.eval_batch_size], labels[start:start + self.eval_batch_size]
            logits = model(x).float()
            totals[0] += F.cross_entropy(logits, y, reduction="sum").double()
            totals[1] += (logits.argmax(1) == y).sum()
        loss, correct = sum_over_ranks(totals).tolist()
        n = len(labels)
        return {f"{split}/loss": loss / n, f"{split}/acc": correct / n}
