"""From a run's config (the composed Hydra config, or the copy a checkpoint or config.yaml keeps)
to its task and model: the one place that does it, for training, translating and analysing."""
from __future__ import annotations

from typing import Mapping, Union

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from repro.nn import NormFactory

from .base import Task


def build_task(cfg: Union[DictConfig, Mapping]) -> Task:
    """The task `cfg.task` names, with `cfg.model` as its model constructor and `cfg.data` as its
    options (nothing is read yet: data loads in `task.setup`)."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    return instantiate(cfg.task, model=instantiate(cfg.model), seed=cfg.seed, **cfg.data)


def build_task_and_model(cfg: Union[DictConfig, Mapping]) -> tuple[Task, nn.Module]:
    """The task and its model with the norm `cfg.norm` describes (on the CPU, untrained)."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    task = build_task(cfg)
    return task, task.build_model(NormFactory.from_config(cfg.norm))
