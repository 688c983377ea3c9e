"""Validation of the composed config: every bad value fails before any work starts, as one line
naming the key and what it accepts.
"""
from __future__ import annotations

import os
from numbers import Integral, Real

from omegaconf import DictConfig, OmegaConf

from repro.data.cifar10 import PREPROCESS
from repro.data.translation import CorpusError, check_translation_options
from repro.nn import NORM_NAMES, NormFactory
from repro.track import WANDB_MODES

from .optim import OPTIMIZERS, SCHEDULES

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
LOGGERS = ("wandb", "none")


class ConfigError(ValueError):
    """A bad config value; str(error) is the one-line message shown to the user."""


def _get(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, throw_on_missing=False, default="<absent>")
    if value == "<absent>":
        raise ConfigError(f"{key} is missing from the config")
    return value


def _choice(cfg, key, allowed):
    value = _get(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed: must be one of {', '.join(map(str, allowed))}")
    return value


def _int(cfg, key, minimum, *, optional=False):
    value = _get(cfg, key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        extra = " or null" if optional else ""
        raise ConfigError(f"{key}={value!r} is not allowed: must be an integer >= {minimum}{extra}")
    return value


def _number(cfg, key, minimum, *, strict=False):
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, Real) or value < minimum or (strict and value == minimum):
        raise ConfigError(f"{key}={value!r} is not allowed: must be a number {'>' if strict else '>='} {minimum}")
    return value


def _bool(cfg, key):
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not allowed: must be true or false")
    return value


def norm_factory(norm: DictConfig) -> NormFactory:
    """The NormFactory a norm config describes. `partial` belongs to pRMSNorm only, so the shared
    default (0.0625) reaches no other norm."""
    return NormFactory(
        norm.name, eps=norm.eps, partial=norm.partial if norm.name == "prmsnorm" else None,
        eps_mode=norm.eps_mode, backend=norm.backend, conv_mode=norm.conv_mode, affine=norm.affine,
    )


def validate_config(cfg: DictConfig, world_size: int = 1) -> None:
    """Raise ConfigError on the first bad value."""
    _int(cfg, "seed", 0)
    _choice(cfg, "norm.name", NORM_NAMES)
    # Checked for every norm: the shared value reaches prmsnorm whenever a sweep switches to it.
    partial = _number(cfg, "norm.partial", 0, strict=True)
    if partial > 1:
        raise ConfigError(f"norm.partial={partial!r} is not allowed: must be in (0, 1]")
    try:
        norm_factory(cfg.norm)
    except ValueError as error:
        raise ConfigError(f"norm.{error}") from None

    _choice(cfg, "optim.name", OPTIMIZERS)
    _number(cfg, "optim.lr", 0, strict=True)
    _number(cfg, "optim.weight_decay", 0)
    _choice(cfg, "optim.schedule.name", SCHEDULES)
    _int(cfg, "optim.schedule.warmup_steps", 0)
    decay_start = _number(cfg, "optim.schedule.decay_start", 0)
    if decay_start >= 1:
        raise ConfigError(f"optim.schedule.decay_start={decay_start!r} is not allowed: must be in [0, 1)")
    if cfg.optim.schedule.name == "inverse_sqrt" and cfg.optim.schedule.warmup_steps < 1:
        raise ConfigError("optim.schedule.warmup_steps=0 is not allowed with inverse_sqrt: must be >= 1")

    t = "trainer"
    max_steps = _int(cfg, f"{t}.max_steps", 1, optional=True)
    if max_steps is None:
        _int(cfg, f"{t}.max_epochs", 1)
    for key in ("eval_every", "log_every", "checkpoint_every", "accumulate"):
        _int(cfg, f"{t}.{key}", 1)
    _int(cfg, f"{t}.norm_timing_every", 0)
    _int(cfg, f"{t}.keep_checkpoints", 0)
    _number(cfg, f"{t}.grad_clip", 0)
    _choice(cfg, f"{t}.precision", PRECISIONS)
    device = _choice(cfg, f"{t}.device", DEVICES)
    if device == "cuda" and not _cuda_available():
        raise ConfigError("trainer.device='cuda' is not allowed: no CUDA device here (use auto or cpu)")
    devices = _int(cfg, f"{t}.devices", 1)
    if devices != world_size:
        raise ConfigError(
            f"trainer.devices={devices} does not match the {world_size} process(es) running: launch "
            f"`torchrun --nproc_per_node={devices} -m repro.cli.train ...` for DDP"
        )
    for key in ("deterministic", "progress_bar"):
        _bool(cfg, f"{t}.{key}")
    resume = _get(cfg, f"{t}.resume")
    if resume not in (None, "auto", "none") and not os.path.exists(os.path.expanduser(str(resume))):
        raise ConfigError(
            f"trainer.resume={resume!r} is not allowed: must be auto, none, or an existing checkpoint or run dir"
        )

    _bool(cfg, "track.drift")
    _int(cfg, "track.drift_every", 1)
    _number(cfg, "track.drift_mean_threshold", 0, strict=True)
    _number(cfg, "track.drift_partial_threshold", 0, strict=True)

    batch_size = _int(cfg, "data.batch_size", 1)
    if batch_size % world_size:
        raise ConfigError(
            f"data.batch_size={batch_size} is not allowed: must be a multiple of trainer.devices={world_size}"
        )
    if "preprocess" in cfg.data:  # the image tasks' data options
        _choice(cfg, "data.preprocess", PREPROCESS)
        _int(cfg, "data.val_size", 0)
        _int(cfg, "data.crop_padding", 0)
        _int(cfg, "data.eval_batch_size", 1)
        _number(cfg, "data.zca_eps", 0, strict=True)
        _bool(cfg, "data.flip")
        _bool(cfg, "data.download")
    if "max_tokens" in cfg.data:  # the translation tasks' data options (rules in repro.data.translation)
        try:
            check_translation_options(OmegaConf.to_container(cfg.data, resolve=True))
        except CorpusError as error:
            raise ConfigError(str(error)) from None

    if _choice(cfg, "logger.name", LOGGERS) == "wandb":
        _choice(cfg, "logger.mode", WANDB_MODES)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
