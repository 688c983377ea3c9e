"""The norm factory: the one place that turns a norm name and options into norm layers.

Models receive a NormFactory ("a norm", timm-style) and never see a norm name, so every paper
norm runs through the same model code; config turns into a factory here and nowhere else.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from repro.kernels.ops import BACKENDS, EPS_MODES, check_backend, check_eps, check_eps_mode, check_partial
from repro.util import option, register_schema

from .norms import CONV_MODES, PARTIAL_RMS_NORM_DEFAULT, ConvNorm, check_conv_mode, check_dim, check_flag
from .registry import NORM_NAMES, NORMS, NormSpec, norm_spec

# Layers whose weight rows are output units, so weight norm's dim=0 is the paper's per-unit norm.
WEIGHT_NORM_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class NormConfig:
    """The `norm` config group's schema. `partial` is shared by every norm (a sweep over norms sets
    it once) and read only by those that take one (repro.nn.registry)."""
    name: str = option(choices=NORM_NAMES)
    eps: Optional[float] = option(None, minimum=0, strict=True)  # null: the norm's default
    partial: float = option(PARTIAL_RMS_NORM_DEFAULT, minimum=0, strict=True, maximum=1)
    eps_mode: str = option("inside", choices=EPS_MODES)
    backend: str = option("auto", choices=BACKENDS)
    conv_mode: str = option("spatial", choices=CONV_MODES)
    affine: bool = option(True)



register_schema("norm", "norm_schema", NormConfig)  # conf/norm/*.yaml list it first
class NormFactory:
    """Builds the activation norm of one kind: `factory(dim)` for features-last input (..., dim),
    `factory(dim, conv=True)` for conv features (N, dim, H, W) (normalized as `conv_mode` says),
    and `factory.wrap(layer)` for the weight reparameterization ("weightnorm" only).

    What each norm is (its layer, row op, default eps, which options it takes) comes from its
    entry in repro.nn.registry; this class only checks options against the entry and builds.
    `eps=None` takes the norm's default (RMSNorm: 1e-6 inside, 1e-8 outside the root).
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
        spec = norm_spec(name)
        check_eps_mode(eps_mode)
        check_backend(backend)
        check_conv_mode(conv_mode)
        check_flag("affine", affine)
        if eps_mode not in (spec.eps_modes or ("inside",)):
            takers = tuple(n for n, s in NORMS.items() if eps_mode in s.eps_modes)
            raise ValueError(f"eps_mode={eps_mode!r} applies only to norm in {takers}, not {name!r}")
        self.spec, self.name, self.eps_mode, self.backend = spec, name, eps_mode, backend
        self.conv_mode, self.affine = conv_mode, affine
        self.partial = self._resolve_partial(spec, partial)
        self.eps = self._resolve_eps(spec, eps, eps_mode)

    @staticmethod
    def _resolve_partial(spec: NormSpec, partial: Optional[float]) -> Optional[float]:
        if spec.partial is None:
            if partial is not None:
                takers = " or ".join(repr(n) for n, s in NORMS.items() if s.takes_partial)
                raise ValueError(f"partial applies only to norm={takers}, not {spec.name!r}; leave it None")
            return None
        if partial is None:
            return spec.partial
        check_partial(partial)
        if spec.partial_fixed and partial != spec.partial:
            takers = " or ".join(repr(n) for n, s in NORMS.items() if s.takes_partial)
            raise ValueError(f"partial={partial!r} < 1 is pRMSNorm: use norm={takers} with it")
        return float(partial)

    @staticmethod
    def _resolve_eps(spec: NormSpec, eps: Optional[float], eps_mode: str) -> Optional[float]:
        if not spec.eps:
            if eps is not None:
                raise ValueError(f"eps has no meaning for norm={spec.name!r}; leave it None")
            return None
        if eps is None:
            return spec.eps[eps_mode]
        check_eps(eps)
        return float(eps)

    def with_partial(self, partial: Optional[float]) -> "NormFactory":
        """This factory with pRMSNorm's p replaced (None: unchanged); the same factory for norms
        without a partial ratio, so a model can ask for it whatever the norm."""
        if partial is None or self.spec.partial is None:
            return self
        return NormFactory(self.name, eps=self.eps, partial=partial, eps_mode=self.eps_mode,
                           backend=self.backend, conv_mode=self.conv_mode, affine=self.affine)

    def _options(self) -> dict:
        """The keyword options this norm's layer and row op take (besides eps)."""
        values = {"partial": self.partial, "eps_mode": self.eps_mode, "backend": self.backend}
        return {key: values[key] for key in self.spec.options}

    def __call__(self, dim: int, *, conv: bool = False) -> nn.Module:
        """The activation norm for `dim` features; conv=True: input is (N, dim, H, W)."""
        check_dim(dim)
        check_flag("conv", conv)
        spec = self.spec
        if spec.is_identity:
            return nn.Identity()
        if conv and spec.conv_module is not None:
            return spec.conv_module(dim, self.eps, affine=self.affine, **self._options())
        if conv:
            return ConvNorm(dim, self._row_op(), mode=self.conv_mode, affine=self.affine,
                            fused_affine=spec.fuses_channel_affine)
        return spec.module(dim, self.eps, affine=self.affine, **self._options())

    def _row_op(self):
        """The parameter-free op over the last dim that ConvNorm applies to its rows."""
        return functools.partial(self.spec.op, eps=self.eps, **self._options())

    def wrap(self, layer: nn.Module) -> nn.Module:
        """Weight norm (w = g * v / ||v|| per output unit) on a Linear/Conv layer for "weightnorm";
        the layer unchanged for every other norm. The gain starts at ||v||, so the layer computes
        the same function as before (no data-dependent init)."""
        if not isinstance(layer, WEIGHT_NORM_LAYERS):
            names = ", ".join(cls.__name__ for cls in WEIGHT_NORM_LAYERS)
            raise ValueError(f"layer must be one of ({names}), got {type(layer).__name__}")
        return weight_norm(layer) if self.spec.reparameterizes_weights else layer

    def __repr__(self) -> str:
        return (
            f"NormFactory({self.name!r}, eps={self.eps!r}, partial={self.partial!r}, "
            f"eps_mode={self.eps_mode!r}, backend={self.backend!r}, conv_mode={self.conv_mode!r}, "
            f"affine={self.affine!r})"
        )


def norm_factory(norm) -> NormFactory:
    """The factory a norm config (the `norm` group, a mapping) describes. The shared `partial`
    (0.0625 by default) reaches only the norms that take one, so a sweep over norms sets it once."""
    spec = norm_spec(norm["name"])
    return NormFactory(
        spec.name, eps=norm["eps"], partial=norm["partial"] if spec.takes_partial else None,
        eps_mode=norm["eps_mode"], backend=norm["backend"], conv_mode=norm["conv_mode"], affine=norm["affine"],
    )


def build_norm(name: str, dim: int, **options) -> nn.Module:
    """The activation norm `name` for `dim` features; options are NormFactory's plus `conv`."""
    conv = options.pop("conv", False)
    return NormFactory(name, **options)(dim, conv=conv)
