"""From a run's config (the composed Hydra config, or the copy a checkpoint or config.yaml keeps)
to its task and model: the one place that does it, for training, translating and analysing."""
from __future__ import annotations

from typing import Mapping, Union

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from repro.nn import norm_factory
from repro.util import ConfigError

from .base import Task


OPTIONAL_GROUPS = ("decode",)
# Options that lived in the data group before the decode group existed: a run recorded then
# (config.yaml, or the config inside a checkpoint) is read with them moved over.
FORMER_DATA_OPTIONS = {"decode": ("beam", "val_beam", "length_penalty", "max_len_a", "max_len_b"),
                       "task": ("label_smoothing",)}


def _as_current(cfg: Union[DictConfig, Mapping]) -> DictConfig:
    cfg = OmegaConf.create(OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg))
    for group, keys in FORMER_DATA_OPTIONS.items():
        moved = {key: cfg.data.pop(key) for key in keys if key in cfg.data}
        if moved:
            cfg[group] = {**moved, **(OmegaConf.to_container(cfg[group]) if cfg.get(group) is not None else {})}
    return cfg


def task_class(task: Mapping) -> type[Task]:
    """The Task class a `task` config group builds: `_target_` itself, or for a factory that wraps
    a task (e.g. repro.analysis.shift_training.shifted_init_task) the class its `base_target`
    names. Its `check_options` checks the data group."""
    target = task.get("_target_")
    try:
        found = get_object(str(target))
    except Exception:  # noqa: BLE001 - hydra raises several kinds for a bad path
        found = None
    if isinstance(found, type) and issubclass(found, Task):
        return found
    if found is not None and task.get("base_target"):
        return task_class({"_target_": task["base_target"]})
    raise ConfigError(f"task._target_={target!r} is not allowed: must name a repro.tasks.Task class "
                      "(or a factory with a base_target that does)")


def build_task(cfg: Union[DictConfig, Mapping]) -> Task:
    """The task `cfg.task` names, with `cfg.model` as its model constructor and `cfg.data` as its
    options (nothing is read yet: data loads in `task.setup`)."""
    cfg = _as_current(cfg)
    # Groups only some tasks read (translation: decode) reach the task when the config has them.
    extra = {group: cfg[group] for group in OPTIONAL_GROUPS if cfg.get(group) is not None}
    return instantiate(cfg.task, model=instantiate(cfg.model), seed=cfg.seed, **cfg.data, **extra)


def build_task_and_model(cfg: Union[DictConfig, Mapping]) -> tuple[Task, nn.Module]:
    """The task and its model with the norm `cfg.norm` describes (on the CPU, untrained)."""
    cfg = _as_current(cfg)
    task = build_task(cfg)
    return task, task.build_model(norm_factory(cfg.norm))
