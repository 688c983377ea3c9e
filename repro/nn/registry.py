"""The norm registry: one entry per norm, and everything that differs between norms lives in it.

The factory (layers from config), the drift monitor (which rows a layer normalizes, whether it
centres them), config validation (allowed names) and the tables (row label and order) all read
these entries; none of them names a norm. Adding a norm is one `NormSpec` below plus one file in
conf/norm/.

An entry holds:
- `module`: the layer for features-last input (..., dim), called as
  `module(dim, eps, affine=..., **{option: ... for option in options})`; None: no activation norm
  (an identity), as for "none" and "weightnorm".
- `op`: the parameter-free row op `op(rows, weight=None, bias=None, eps=..., **options)` that
  `ConvNorm` applies to conv features; None when `conv_module` handles conv features itself.
- `fuses_channel_affine`: `op` also takes `affine_dim=-2` (a per-channel gain and offset applied
  inside it), which `ConvNorm` then uses instead of applying them after it.
- `conv_module`: a layer of its own for conv features (N, C, H, W), built like `module`
  (BatchNorm2d: statistics per channel over the batch, not per row).
- `eps`: the default eps per allowed `eps_mode` ({} : the norm has no eps).
- `options`: the keyword options `module` and `op` take besides eps: "partial", "eps_mode",
  "backend" (the last for norms with fused kernels).
- `partial`: the default `partial` for norms that take it; `partial_fixed`: it may only be 1.
- `centered`: the norm subtracts the row mean (the drift monitor never warns about mean drift).
- `row_statistics`: the statistic is per row of the layer's input (False: per channel over the
  batch, as BatchNorm), so the drift monitor can measure it.
- `reparameterizes_weights`: `NormFactory.wrap` applies weight norm to Linear/Conv layers.
- `label`: the row label in tables and figures. The registry's order is the tables' row order.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import nn

from repro import kernels

from .norms import (
    BATCH_NORM_EPS, L2_NORM_EPS, LAYER_NORM_EPS, PARTIAL_RMS_NORM_DEFAULT, RMS_NORM_EPS, BatchNorm,
    BatchNorm2d, ConvNorm, L2Norm, LayerNorm, PartialRMSNorm, RMSNorm, l2_norm,
)


@dataclass(frozen=True)
class NormSpec:
    name: str
    label: str
    module: Optional[type] = None
    op: Optional[Callable] = None
    fuses_channel_affine: bool = False
    conv_module: Optional[type] = None
    eps: dict[str, float] = field(default_factory=dict)
    options: tuple[str, ...] = ()
    partial: Optional[float] = None
    partial_fixed: bool = False
    centered: bool = False
    row_statistics: bool = True
    reparameterizes_weights: bool = False

    @property
    def eps_modes(self) -> tuple[str, ...]:
        return tuple(self.eps)

    @property
    def takes_partial(self) -> bool:
        """A `partial` other than 1 is meaningful (pRMSNorm)."""
        return self.partial is not None and not self.partial_fixed

    @property
    def is_identity(self) -> bool:
        return self.module is None


# The default values are the modules' own defaults (repro.nn.norms), so a layer built by hand and
# one built from config agree.
RMS_OPTIONS = ("partial", "eps_mode", "backend")

_SPECS = (
    NormSpec("none", "None", row_statistics=False),
    NormSpec("batchnorm", "BatchNorm", module=BatchNorm, conv_module=BatchNorm2d,
             eps={"inside": BATCH_NORM_EPS}, row_statistics=False),
    NormSpec("weightnorm", "WeightNorm", row_statistics=False, reparameterizes_weights=True),
    NormSpec("l2norm", "L2-Norm", module=L2Norm, op=l2_norm, eps={"inside": L2_NORM_EPS}),
    NormSpec("layernorm", "LayerNorm", module=LayerNorm, op=kernels.layer_norm, fuses_channel_affine=True,
             eps={"inside": LAYER_NORM_EPS}, options=("backend",), centered=True),
    NormSpec("rmsnorm", "RMSNorm", module=RMSNorm, op=kernels.rms_norm, fuses_channel_affine=True,
             eps=RMS_NORM_EPS, options=RMS_OPTIONS, partial=1.0, partial_fixed=True),
    NormSpec("prmsnorm", "pRMSNorm", module=PartialRMSNorm, op=kernels.rms_norm, fuses_channel_affine=True,
             eps=RMS_NORM_EPS, options=RMS_OPTIONS, partial=PARTIAL_RMS_NORM_DEFAULT),
)

NORMS: dict[str, NormSpec] = {spec.name: spec for spec in _SPECS}
NORM_NAMES = tuple(NORMS)


def norm_spec(name: str) -> NormSpec:
    if name not in NORMS:
        raise ValueError(f"norm must be one of {NORM_NAMES}, got {name!r}")
    return NORMS[name]


def spec_of_layer(layer: nn.Module) -> Optional[NormSpec]:
    """The entry a norm layer was built from: by its class, or for a ConvNorm by its row op;
    None for a layer no entry names (e.g. a ConvNorm over some other op)."""
    if isinstance(layer, ConvNorm):
        op = layer.normalize
        func = op.func if isinstance(op, functools.partial) else op
        return next((spec for spec in _SPECS if spec.op is func), None)
    exact = next((spec for spec in _SPECS if type(layer) in (spec.module, spec.conv_module)), None)
    if exact is not None:
        return exact
    return next((spec for spec in _SPECS
                 if any(cls is not None and isinstance(layer, cls) for cls in (spec.module, spec.conv_module))),
                None)
