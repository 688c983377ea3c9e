"""Optimizers and learning-rate schedules, chosen by name from config.

A schedule is a pure function of the step (a LambdaLR multiplier), so resuming restores it exactly
from the step alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from repro.nn import NormLayer
from repro.util import ConfigError, check_options, option, register_schema

# Modules whose own parameters never decay: norm gains and offsets (a norm comparison must not be
# confounded by decaying the norm's own parameters) and embedding tables.
NO_DECAY_MODULES = (NormLayer, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding)
SCHEDULES = ("constant", "paper", "inverse_sqrt", "cosine")
DECAY_UNITS = ("step", "epoch")


@dataclass
class ScheduleConfig:
    """The schema of `optim.schedule` (see lr_multiplier)."""
    name: str = option("paper", choices=SCHEDULES)
    warmup_steps: int = option(0, minimum=0)
    decay_start: float = option(0.5, minimum=0, maximum=1, max_strict=True)
    # "paper" only: Adam's beta1 from the decay's start on (Salimans & Kingma: 0.9 -> 0.5 at epoch
    # 100 of 200); null keeps the optimizer's beta1 throughout.
    final_beta1: Optional[float] = option(None, minimum=0, maximum=1, max_strict=True)
    # "paper" only: how often the decaying lr changes. "step": every optimizer step, 0 at the end;
    # "epoch": once per epoch, as Salimans & Kingma's code (lr0 * min(2 - epoch/100, 1) at 200
    # epochs: the last epoch runs at lr0/100).
    decay_per: str = option("step", choices=DECAY_UNITS)


@dataclass
class OptimConfig:
    """The `optim` config group's schema."""
    name: str = option()                            # a label (W&B, tables): the file name
    _target_: str = option()                        # the torch.optim class, e.g. torch.optim.AdamW
    lr: float = option(minimum=0, strict=True)
    weight_decay: float = option(0.0, minimum=0)
    # The class's own options: passed only when the file sets them (SGD has no betas, Adam no momentum).
    betas: Optional[list] = option(None)
    momentum: Optional[float] = option(None, minimum=0)
    nesterov: Optional[bool] = option(None)
    schedule: dict = option(default_factory=dict)

    def check(self) -> ScheduleConfig:
        """The optimizer class and the schedule, checked (rules between options included)."""
        optimizer_class(self._target_)
        schedule = check_options(self.schedule, ScheduleConfig, "optim.schedule")
        if schedule.final_beta1 is not None and schedule.name != "paper":
            raise ConfigError(f"optim.schedule.final_beta1={schedule.final_beta1} is not allowed with "
                              f"{schedule.name}: must be null (only the paper schedule sets beta1)")
        if schedule.decay_per != "step" and schedule.name != "paper":
            raise ConfigError(f"optim.schedule.decay_per={schedule.decay_per} is not allowed with {schedule.name}: "
                              "must be step (only the paper schedule decays per epoch)")
        if schedule.final_beta1 is not None and self.betas is None:
            raise ConfigError("optim.schedule.final_beta1 is not allowed for an optimizer without betas: must be null")
        if schedule.name == "inverse_sqrt" and schedule.warmup_steps < 1:
            raise ConfigError("optim.schedule.warmup_steps=0 is not allowed with inverse_sqrt: must be >= 1")
        return schedule



register_schema("optim", "optim_schema", OptimConfig)
def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups, as timm does: weight decay on the weight matrices and kernels of
    linear / conv layers only; none on biases, norm gains and offsets (including weight norm's g),
    embeddings, or what the model lists in `no_weight_decay()` (position tables)."""
    exempt = {id(p) for name, p in model.named_parameters() if name in _listed_exempt(model)}
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False))
        if isinstance(module, NO_DECAY_MODULES):
            exempt |= {id(p) for p in own.values()}
        if isinstance(module, parametrize.ParametrizationList) and any(
                type(m).__name__ == "_WeightNorm" for m in module):
            exempt.add(id(module.original0))  # weight norm's gain g (original1 is the direction v)
        exempt |= {id(p) for p in own.values() if p.ndim <= 1}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if id(p) in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _listed_exempt(model: nn.Module) -> set[str]:
    """Full parameter names a model (or any submodule) exempts through `no_weight_decay()`."""
    names = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{n}" if prefix else n for n in listed()}
    return names


def optimizer_class(target: str) -> type:
    """The torch.optim.Optimizer subclass `target` names, or a one-line ConfigError."""
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception:  # hydra raises ImportError or ValueError with a multi-line message
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optim._target_={target!r} is not allowed: must name a torch.optim.Optimizer class")
    return cls


def build_optimization(model: nn.Module, optim) -> tuple[torch.optim.Optimizer, dict]:
    """The optimizer over `model`'s two weight-decay groups and the schedule's options, from the
    composed `optim` group: how the trainer and repro-bench steps both build them."""
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(optim, resolve=True) if OmegaConf.is_config(optim) else dict(optim)
    schedule = options.pop("schedule")
    config = OptimConfig(**options)
    return build_optimizer(parameter_groups(model, config.weight_decay), config), schedule


def build_optimizer(params, config: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer the config's `_target_` names, instantiated by Hydra over `params` with the
    options the config sets (no switch over names: a new optimizer is a conf file)."""
    from hydra.utils import instantiate

    optimizer_class(config._target_)
    options = {"lr": config.lr, "weight_decay": config.weight_decay, "momentum": config.momentum,
               "nesterov": config.nesterov, "betas": tuple(config.betas) if config.betas is not None else None}
    return instantiate({"_target_": config._target_, **{k: v for k, v in options.items() if v is not None}}, params)


def lr_multiplier(*, name: str, total_steps: int, warmup_steps: int = 0, decay_start: float = 0.5,
                  decay_per: str = "step", steps_per_epoch: Optional[int] = None) -> Callable[[int], float]:
    """The multiplier of the base lr at step s (s = number of optimizer steps already taken).

    - "constant": 1 after warmup.
    - "paper": the RMSNorm/weight-norm CIFAR schedule: constant, then linear decay to 0 from
      `decay_start` (fraction of training, 0.5 = the second half) to the end; with
      decay_per="epoch" the same line sampled at each epoch's start and held for the epoch
      (min(1, (E - e) / (E - decay_start * E)) in epoch e of E: never 0).
    - "inverse_sqrt": the Transformer schedule, linear warmup then sqrt(warmup / s).
    - "cosine": linear warmup then cosine decay to 0 at `total_steps`.
    """
    def warm(s: int) -> float:
        return (s + 1) / warmup_steps if s < warmup_steps else 1.0

    if name == "constant":
        return warm
    if name == "paper":
        if decay_per == "epoch":
            if not steps_per_epoch:
                raise ValueError("decay_per='epoch' needs steps_per_epoch")
            epochs = total_steps / steps_per_epoch
            begin_epoch = decay_start * epochs

            def per_epoch(s: int) -> float:
                epoch = s // steps_per_epoch
                return warm(s) * min(1.0, max(0.0, (epochs - epoch) / max(epochs - begin_epoch, 1e-12)))
            return per_epoch
        if decay_per != "step":
            raise ValueError(f"decay_per must be one of {DECAY_UNITS}, got {decay_per!r}")
        begin = decay_start * total_steps

        def paper(s: int) -> float:
            return warm(s) * min(1.0, max(0.0, (total_steps - s) / max(total_steps - begin, 1e-12)))
        return paper
    if name == "inverse_sqrt":
        return lambda s: warm(s) if s < warmup_steps else math.sqrt(max(warmup_steps, 1) / (s + 1))
    if name == "cosine":
        span = max(total_steps - warmup_steps, 1)
        return lambda s: warm(s) * 0.5 * (1 + math.cos(math.pi * min(max(s - warmup_steps, 0) / span, 1.0)))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")


class PaperSchedule(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR that also sets Adam's beta1 as a pure function of the step, as Salimans & Kingma's
    code does: the optimizer's own beta1 before the decay starts, `final_beta1` from then on (their
    mom1 = 0.9 for epochs < 100, 0.5 after; a switch, not a ramp). Being a function of the step
    alone, a resumed run gets the same beta1 as the uninterrupted one."""

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: Callable[[int], float], *,
                 decay_begin: float, final_beta1: float):
        self.decay_begin, self.final_beta1 = decay_begin, final_beta1
        for group in optimizer.param_groups:
            group.setdefault("initial_beta1", group["betas"][0])
        super().__init__(optimizer, multiplier)

    def beta1(self, step: int, initial: float) -> float:
        return initial if step < self.decay_begin else self.final_beta1

    def step(self, epoch=None):
        super().step(epoch)
        for group in self.optimizer.param_groups:
            group["betas"] = (self.beta1(self.last_epoch, group["initial_beta1"]), group["betas"][1])


def build_scheduler(optimizer: torch.optim.Optimizer, *, final_beta1: Optional[float] = None,
                    **schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """`schedule`: lr_multiplier's arguments (total_steps; steps_per_epoch for decay_per="epoch")."""
    multiplier = lr_multiplier(**schedule)
    if final_beta1 is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    if schedule.get("name") != "paper":
        raise ValueError(f"final_beta1 applies only to the paper schedule, not {schedule.get('name')!r}")
    begin = schedule.get("decay_start", 0.5) * schedule["total_steps"]
    return PaperSchedule(optimizer, multiplier, decay_begin=begin, final_beta1=final_beta1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
