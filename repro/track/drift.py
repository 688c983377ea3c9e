"""Drift monitor: does the input of each norm layer still satisfy what its statistic assumes?

RMSNorm drops LayerNorm's re-centering on the assumption that its inputs have a mean near zero,
an assumption that needs monitoring in production (nothing in training enforces it); pRMSNorm assumes
that the first k features estimate the RMS of the whole row. Every `every` steps, for one forward
pass, the monitor hooks each `repro.nn.NormLayer` and measures over the rows that layer normalizes:

- `drift/<layer>/mean_over_rms`: mean over rows of |mean(x)| / RMS(x), in [0, 1]. 0 is a
  zero-mean row; 1 a constant row (all its energy is in the mean).
- `drift/<layer>/partial_rel_err` (pRMSNorm only): mean over rows of |RMS(x[:k]) - RMS(x)| / RMS(x),
  the relative error of the partial estimate the layer actually divides by.

A layer that crosses its threshold is warned about once (`warnings.warn` and the log); the
warning text is also returned by `collect()` so the trainer can send it to W&B. Only layers
whose statistic is uncentered (RMS-type) are warned about for the mean; LayerNorm subtracts the
mean, so its value is logged for comparison but never warned about.

Use (the trainer, around one training step's forward pass):

    drift = DriftMonitor(model, every=100, mean_threshold=0.5, partial_threshold=0.2)
    with drift.observe(step, defer=norms_timed_this_step):  # hooks only on sampled steps
        loss = model(batch) ...
    metrics, warnings = drift.collect()  # {} and [] on steps that were not sampled

Between sampled steps no hook is attached, so they cost nothing and torch.compile'd models see
no hooks.
"""
from __future__ import annotations

import functools
import logging
import warnings as _warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from repro.kernels.reference import partial_size
from repro.nn import ConvNorm, NormLayer, spec_of_layer
from repro.util import option

log = logging.getLogger(__name__)


class DriftWarning(UserWarning):
    """A norm layer's input crossed a drift threshold."""


def row_stats(rows: Tensor, partial: Optional[float] = None) -> dict[str, float]:
    """The drift statistics of `rows` (..., N), computed in fp32 over the last dim and averaged
    over all rows. `partial`: also the relative error of the RMS of the first floor(partial*N)
    features (pRMSNorm's estimate) against the full RMS."""
    x = rows.detach().float().reshape(-1, rows.shape[-1])
    rms = x.square().mean(-1).sqrt()
    # A zero row has no direction to drift in; clamping keeps it at 0 instead of 0/0.
    tiny = torch.finfo(torch.float32).tiny
    stats = {"mean_over_rms": (x.mean(-1).abs() / rms.clamp_min(tiny)).mean().item()}
    if partial is not None and partial < 1.0:
        k = partial_size(x.shape[-1], partial)
        partial_rms = x[:, :k].square().mean(-1).sqrt()
        stats["partial_rel_err"] = ((partial_rms - rms).abs() / rms.clamp_min(tiny)).mean().item()
    return stats


def norm_rows_layout(layer: nn.Module):
    """(to_rows, partial, centered) for a norm layer, from its registry entry; None for layers
    without per-row statistics (BatchNorm normalizes over the batch)."""
    spec = spec_of_layer(layer)
    if spec is not None and not spec.row_statistics:
        return None
    centered = spec is not None and spec.centered
    if isinstance(layer, ConvNorm):
        op = layer.normalize
        keywords = op.keywords if isinstance(op, functools.partial) else {}
        partial = None if centered else keywords.get("partial", 1.0)
        if layer.mode == "channel":
            return (lambda x: x.movedim(1, -1)), partial, centered
        return (lambda x: x.flatten(2)), partial, centered  # (N, C, H*W): rows per sample and channel
    return (lambda x: x), getattr(layer, "partial", None), centered


@dataclass
class DriftSettings:
    """The `track` config group's schema: the drift monitor's options."""
    drift: bool = option(False)
    drift_every: int = option(100, minimum=1)
    drift_mean_threshold: float = option(0.5, minimum=0, strict=True)
    drift_partial_threshold: float = option(0.2, minimum=0, strict=True)

    def monitor(self, model: nn.Module) -> "DriftMonitor":
        """The monitor these settings describe (every=0, i.e. off, unless `drift`)."""
        return DriftMonitor(model, self.drift_every if self.drift else 0,
                            mean_threshold=self.drift_mean_threshold, partial_threshold=self.drift_partial_threshold)


class DriftMonitor:
    def __init__(self, model: nn.Module, every: int, *, mean_threshold: float = 0.5,
                 partial_threshold: float = 0.2):
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"every must be an int >= 0 (0 = off), got {every!r}")
        for name, value in (("mean_threshold", mean_threshold), ("partial_threshold", partial_threshold)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        self.every, self.mean_threshold, self.partial_threshold = every, float(mean_threshold), float(partial_threshold)
        self.layers = {}
        for name, module in model.named_modules():
            layout = norm_rows_layout(module) if isinstance(module, NormLayer) else None
            if layout is not None:
                self.layers[name or type(module).__name__] = (module, *layout)
        self.warned: set[tuple[str, str]] = set()
        self._sample: Optional[dict] = None
        self._pending = False

    def due(self, step: int) -> bool:
        return self.every > 0 and bool(self.layers) and step % self.every == 0

    @contextmanager
    def observe(self, step: int, *, defer: bool = False):
        """Record the norm inputs of the forward passes inside the block when `step` is due.
        `defer=True` (e.g. on a step whose norms are being timed, where the hooks would count as
        norm time) moves a due sample to the next step observed without it."""
        self._pending = self._pending or self.due(step)
        if not self._pending or defer:
            yield
            return
        self._pending = False
        sample: dict[str, list] = {}

        def hook(name, to_rows, partial):
            def record(module, args):
                sample.setdefault(name, []).append(row_stats(to_rows(args[0]), partial))
            return record

        handles = [module.register_forward_pre_hook(hook(name, to_rows, partial))
                   for name, (module, to_rows, partial, _) in self.layers.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        self._sample = sample

    def collect(self) -> tuple[dict[str, float], list[str]]:
        """Metrics of the last observed step (averaged over the layer's calls in it, e.g.
        micro-batches) and the warnings newly raised by them; ({}, []) when nothing was observed."""
        sample, self._sample = self._sample, None
        if not sample:
            return {}, []
        metrics, raised = {}, []
        for name, calls in sample.items():
            _, _, _, centered = self.layers[name]
            for stat in calls[0]:
                value = sum(c[stat] for c in calls) / len(calls)
                metrics[f"drift/{name}/{stat}"] = value
                threshold = self.partial_threshold if stat == "partial_rel_err" else self.mean_threshold
                if value > threshold and not (centered and stat == "mean_over_rms") and (name, stat) not in self.warned:
                    self.warned.add((name, stat))
                    message = (f"drift: norm layer {name!r} {stat} = {value:.3g} > {threshold:g}"
                               + (" (its input is far from zero-mean, which RMSNorm assumes)"
                                  if stat == "mean_over_rms" else
                                  " (the partial RMS estimate is off; large features may lie outside its prefix)"))
                    raised.append(message)
                    log.warning(message)
                    _warnings.warn(message, DriftWarning, stacklevel=2)
        return metrics, raised
