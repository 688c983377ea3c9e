"""What is benchmarked: the norm ops and the backends that implement them.

A backend turns an `Op` into a function `f(x, weight, bias) -> y` for one benchmark case, or
says why it has none ("n/a": pRMSNorm has no native or Liger op). Availability is probed with a
tiny call on the device, so a backend whose kernels or extension are missing is reported with
the reason instead of failing every case.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from repro import kernels
from repro.kernels import reference

NormFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

OP_FAMILIES = ("layer_norm", "rms_norm", "prms_norm")
PARTIALS = (0.0625, 0.125, 0.25)
LN_EPS = 1e-5
RMS_EPS = 1e-6


@dataclass(frozen=True)
class Op:
    family: str            # one of OP_FAMILIES
    partial: float = 1.0   # pRMSNorm's p; 1.0 for the other two

    @property
    def label(self) -> str:
        if self.family == "layer_norm":
            return "LayerNorm"
        if self.family == "rms_norm":
            return "RMSNorm"
        return f"pRMSNorm p={self.partial:g}"

    @property
    def has_bias(self) -> bool:
        return self.family == "layer_norm"

    @property
    def num_stats(self) -> int:
        """fp32 per-row statistics backward reads: mean and rstd for LayerNorm, rstd otherwise."""
        return 2 if self.family == "layer_norm" else 1


def expand_ops(families, partials) -> list[Op]:
    """The ops of a run: pRMSNorm expands into one op per partial ratio."""
    ops = []
    for family in families:
        if family == "prms_norm":
            ops.extend(Op(family, p) for p in partials)
        else:
            ops.append(Op(family))
    return ops


# ---------------------------------------------------------------------------- builders
def _through_ops(backend: str) -> Callable[[Op], NormFn]:
    """The public repro.kernels functions with a fixed backend ("torch", "triton", "cpu")."""
    def build(op: Op) -> NormFn:
        if op.family == "layer_norm":
            return lambda x, w, b: kernels.layer_norm(x, w, b, LN_EPS, backend=backend)
        return lambda x, w, b: kernels.rms_norm(x, w, RMS_EPS, partial=op.partial, backend=backend)
    return build


def _reference_fn(op: Op) -> NormFn:
    if op.family == "layer_norm":
        return lambda x, w, b: reference.layer_norm(x, w, b, eps=LN_EPS)
    return lambda x, w, b: reference.rms_norm(x, w, eps=RMS_EPS, partial=op.partial)


def _build_compile(op: Op) -> NormFn:
    # A fresh, static-shape compile per case: reset() drops the graphs of earlier shapes, so
    # neither the recompile limit (silent fallback to eager) nor a growing guard list skews times.
    torch._dynamo.reset()
    # The timed backward replays one retained graph, which compiled graphs refuse when they
    # donate saved buffers to the backward (a memory saving, not a speed one).
    torch._functorch.config.donated_buffer = False
    return torch.compile(_reference_fn(op), fullgraph=True, dynamic=False)


def _build_native(op: Op) -> Optional[NormFn]:
    if op.family == "layer_norm":
        return lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, LN_EPS)
    if op.family == "rms_norm":
        return lambda x, w, b: F.rms_norm(x, (x.shape[-1],), w, RMS_EPS)
    return None


def _build_liger(op: Op) -> Optional[NormFn]:
    # the autograd Functions themselves: liger_kernel.transformers would also import HF transformers
    from liger_kernel.ops import LigerLayerNormFunction, LigerRMSNormFunction

    if op.family == "layer_norm":
        return lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, LN_EPS)
    if op.family == "rms_norm":
        # Liger's defaults (offset 0, "llama" casting, in_place=True: dx is written into dy's
        # memory), as a user gets them. In the timed backward this overwrites the pool's dy with
        # dx values: finite numbers of the same scale, and no norm kernel's speed depends on them.
        return lambda x, w, b: LigerRMSNormFunction.apply(x, w, RMS_EPS)
    return None


# ---------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    devices: tuple[str, ...]          # device types it runs on
    build: Callable[[Op], Optional[NormFn]]
    ours: bool = False                # our kernels: the column ratios are taken against
    needs: Optional[str] = None       # kernels.BACKENDS entry it needs, if any
    probe: bool = True                # try a tiny call before the run (see unavailable_reason)

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        """None when the backend runs on `device`, else why not (probed with a tiny call)."""
        if device.type not in self.devices:
            return f"runs on {'/'.join(self.devices)} only, not {device.type}"
        if self.needs is not None and self.needs not in kernels.BACKENDS:
            return f"repro.kernels has no {self.needs!r} backend in this build"
        if not self.probe:
            return None
        try:
            for op in (Op("layer_norm"), Op("rms_norm")):
                fn = self.build(op)
                x = torch.randn(2, 8, device=device, requires_grad=True)
                w = torch.ones(8, device=device, requires_grad=True)
                fn(x, w, torch.zeros(8, device=device) if op.has_bias else None).sum().backward()
        except Exception as err:  # noqa: BLE001 - any failure means "not usable here"
            return f"{type(err).__name__}: {first_line(err)}"
        return None


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


BACKEND_REGISTRY: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("eager", "pure-torch reference (repro.kernels backend='torch')",
                ("cpu", "cuda"), _through_ops("torch")),
        Backend("native", "torch.nn.functional.layer_norm / rms_norm", ("cpu", "cuda"), _build_native),
        # not probed: a probe would pay the compiler's start-up twice; failures show per case
        Backend("compile", "torch.compile(reference, fullgraph=True, dynamic=False)",
                ("cpu", "cuda"), _build_compile, probe=False),
        Backend("triton", "our Triton kernels (repro.kernels backend='triton')",
                ("cuda",), _through_ops("triton"), ours=True, needs="triton"),
        Backend("cpu", "our C++ CPU kernels (repro.kernels backend='cpu')",
                ("cpu",), _through_ops("cpu"), ours=True, needs="cpu"),
        Backend("liger", "Liger-Kernel LigerLayerNormFunction / LigerRMSNormFunction",
                ("cuda",), _build_liger),
    )
}
