"""The norm factory: the one place that turns a norm name and options into norm layers.

Models receive a NormFactory ("a norm", timm-style) and never see a norm name, so every paper
norm runs through the same model code; config turns into a factory here and nowhere else.
"""
from __future__ import annotations

import functools
from typing import Optional

from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from repro import kernels
from repro.kernels.ops import check_backend, check_eps, check_eps_mode, check_partial

from .norms import (
    BATCH_NORM_EPS, L2_NORM_EPS, LAYER_NORM_EPS, PARTIAL_RMS_NORM_DEFAULT, RMS_NORM_EPS,
    BatchNorm, BatchNorm2d, ConvNorm, L2Norm, LayerNorm, PartialRMSNorm, RMSNorm,
    check_conv_mode, check_dim, check_flag, l2_norm,
)

NORM_NAMES = ("none", "layernorm", "rmsnorm", "prmsnorm", "batchnorm", "weightnorm", "l2norm")
RMS_NAMES = ("rmsnorm", "prmsnorm")
DEFAULT_EPS = {"layernorm": LAYER_NORM_EPS, "batchnorm": BATCH_NORM_EPS, "l2norm": L2_NORM_EPS}
# Layers whose weight rows are output units, so weight norm's dim=0 is the paper's per-unit norm.
WEIGHT_NORM_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class NormFactory:
    """Builds the activation norm of one kind: `factory(dim)` for features-last input (..., dim),
    `factory(dim, conv=True)` for conv features (N, dim, H, W) (normalized as `conv_mode` says),
    and `factory.wrap(layer)` for the weight reparameterization ("weightnorm" only).

    `eps=None` takes each norm's default (RMSNorm: 1e-6 inside, 1e-8 outside the root).
    `partial` belongs to "prmsnorm" (default 0.0625); `eps_mode` to the RMS norms. "none" and
    "weightnorm" build an identity activation norm; `backend` only reaches norms with kernels
    (layernorm, rmsnorm, prmsnorm) so one backend setting serves every norm of a sweep.
    """

    def __init__(
        self,
        name: str,
        *,
        eps: Optional[float] = None,
        partial: Optional[float] = None,
        eps_mode: str = "inside",
        backend: str = "auto",
        conv_mode: str = "spatial",
        affine: bool = True,
    ):
        if name not in NORM_NAMES:
            raise ValueError(f"norm must be one of {NORM_NAMES}, got {name!r}")
        check_eps_mode(eps_mode)
        check_backend(backend)
        check_conv_mode(conv_mode)
        check_flag("affine", affine)
        if eps_mode != "inside" and name not in RMS_NAMES:
            raise ValueError(
                f"eps_mode={eps_mode!r} applies only to norm in {RMS_NAMES}, not {name!r}"
            )
        self.name, self.eps_mode, self.backend = name, eps_mode, backend
        self.conv_mode, self.affine = conv_mode, affine
        self.partial = self._resolve_partial(name, partial)
        self.eps = self._resolve_eps(name, eps, eps_mode)

    @staticmethod
    def _resolve_partial(name: str, partial: Optional[float]) -> Optional[float]:
        if name == "prmsnorm":
            partial = PARTIAL_RMS_NORM_DEFAULT if partial is None else partial
            check_partial(partial)
            return float(partial)
        if partial is not None and name != "rmsnorm":
            raise ValueError(
                f"partial applies only to norm='prmsnorm', not {name!r}; leave it None"
            )
        if partial is None:
            return 1.0 if name == "rmsnorm" else None
        check_partial(partial)
        if partial != 1:
            raise ValueError(f"partial={partial!r} < 1 is pRMSNorm: use norm='prmsnorm' with it")
        return 1.0

    @staticmethod
    def _resolve_eps(name: str, eps: Optional[float], eps_mode: str) -> Optional[float]:
        if name in ("none", "weightnorm"):
            if eps is not None:
                raise ValueError(f"eps has no meaning for norm={name!r}; leave it None")
            return None
        if eps is None:
            return RMS_NORM_EPS[eps_mode] if name in RMS_NAMES else DEFAULT_EPS[name]
        check_eps(eps)
        return float(eps)

    def __call__(self, dim: int, *, conv: bool = False) -> nn.Module:
        """The activation norm for `dim` features; conv=True: input is (N, dim, H, W)."""
        check_dim(dim)
        check_flag("conv", conv)
        if self.name in ("none", "weightnorm"):
            return nn.Identity()
        if self.name == "batchnorm":
            return (BatchNorm2d if conv else BatchNorm)(dim, self.eps, affine=self.affine)
        if conv:
            return ConvNorm(dim, self._row_op(), mode=self.conv_mode, affine=self.affine)
        if self.name == "layernorm":
            return LayerNorm(dim, self.eps, affine=self.affine, backend=self.backend)
        if self.name == "l2norm":
            return L2Norm(dim, self.eps, affine=self.affine)
        rms_class = PartialRMSNorm if self.name == "prmsnorm" else RMSNorm
        return rms_class(
            dim, self.eps, partial=self.partial, eps_mode=self.eps_mode, affine=self.affine,
            backend=self.backend,
        )

    def _row_op(self):
        """The parameter-free op over the last dim that ConvNorm applies to its rows."""
        if self.name == "layernorm":
            return functools.partial(kernels.layer_norm, eps=self.eps, backend=self.backend)
        if self.name == "l2norm":
            return functools.partial(l2_norm, eps=self.eps)
        return functools.partial(
            kernels.rms_norm, eps=self.eps, partial=self.partial, eps_mode=self.eps_mode,
            backend=self.backend,
        )

    def wrap(self, layer: nn.Module) -> nn.Module:
        """Weight norm (w = g * v / ||v|| per output unit) on a Linear/Conv layer for "weightnorm";
        the layer unchanged for every other norm. The gain starts at ||v||, so the layer computes
        the same function as before (no data-dependent init)."""
        if not isinstance(layer, WEIGHT_NORM_LAYERS):
            names = ", ".join(cls.__name__ for cls in WEIGHT_NORM_LAYERS)
            raise ValueError(f"layer must be one of ({names}), got {type(layer).__name__}")
        return weight_norm(layer) if self.name == "weightnorm" else layer

    def __repr__(self) -> str:
        return (
            f"NormFactory({self.name!r}, eps={self.eps!r}, partial={self.partial!r}, "
            f"eps_mode={self.eps_mode!r}, backend={self.backend!r}, conv_mode={self.conv_mode!r}, "
            f"affine={self.affine!r})"
        )


def build_norm(name: str, dim: int, **options) -> nn.Module:
    """The activation norm `name` for `dim` features; options are NormFactory's plus `conv`."""
    conv = options.pop("conv", False)
    return NormFactory(name, **options)(dim, conv=conv)
