"""Validation of the composed config: every bad value fails before any work starts, as one line
naming the key and what it accepts.

Each group's owner says what its options accept (repro.util.schema dataclasses): the norm group
repro.nn.NormConfig, the trainer group TrainerSettings, the track group repro.track.DriftSettings,
the optim group repro.train.optim.OptimConfig, the logger group repro.track.LoggerConfig, and the
data (and decode) groups the task that `task._target_` names (Task.check_options). This module
only walks the groups and adds the rules that need the running world (processes, CUDA, files);
it knows no particular task or norm.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from repro.nn import NormConfig, norm_factory
from repro.tasks import task_class
from repro.track import DriftSettings, LoggerConfig
from repro.util import ConfigError, composition_error
from repro.util.paths import CONF_DIR
from repro.util.schema import Rule, check_options, check_value

from .optim import OptimConfig
from .trainer import TrainerSettings

__all__ = ["ConfigError", "compose_config", "validate_config"]


def compose_config(overrides: Sequence[str] = (), *, return_hydra_config: bool = False,
                   conf_dir: Path = CONF_DIR) -> DictConfig:
    """The config repro-train would run with these overrides, composed by Hydra against the
    schemas the groups' owners registered (importing this module imports them all); a value a
    schema rejects, or a key it does not have, is a one-line ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base="1.3"):
        try:
            return compose("config", list(overrides), return_hydra_config=return_hydra_config)
        except ConfigCompositionException as error:
            converted = composition_error(error)
            if converted is None:
                raise
            raise converted from None


def _group(cfg: DictConfig, key: str):
    if key not in cfg:
        raise ConfigError(f"{key} is missing from the config")
    return cfg[key]


def validate_config(cfg: DictConfig, world_size: int = 1) -> None:
    """Raise ConfigError on the first bad value."""
    check_value("seed", cfg.get("seed", "<absent>"), int, Rule(minimum=0))
    norm = check_options(_group(cfg, "norm"), NormConfig, "norm")
    try:
        norm_factory(vars(norm))
    except ValueError as error:
        raise ConfigError(f"norm.{error}") from None

    check_options(_group(cfg, "optim"), OptimConfig, "optim").check()

    trainer = check_options(_group(cfg, "trainer"), TrainerSettings, "trainer")
    if trainer.device == "cuda" and not _cuda_available():
        raise ConfigError("trainer.device='cuda' is not allowed: no CUDA device here (use auto or cpu)")
    if trainer.devices != world_size:
        raise ConfigError(
            f"trainer.devices={trainer.devices} does not match the {world_size} process(es) running: launch "
            f"`torchrun --nproc_per_node={trainer.devices} -m repro.cli.train ...` for DDP"
        )
    resume = trainer.resume
    if resume not in (None, "auto", "none") and not os.path.exists(os.path.expanduser(str(resume))):
        raise ConfigError(
            f"trainer.resume={resume!r} is not allowed: must be auto, none, or an existing checkpoint or run dir"
        )

    check_options(_group(cfg, "track"), DriftSettings, "track")
    task_class(_group(cfg, "task")).check_options(cfg, world_size)
    check_options(_group(cfg, "logger"), LoggerConfig, "logger")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
