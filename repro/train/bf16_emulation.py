"""bf16 autocast on a CPU whose oneDNN has no bf16 support (x86 with AVX2 only): the matrix ops
run in fp32 on bf16-rounded operands, which is bf16 autocast's arithmetic at fp32 speed.

Why: CPU autocast runs convolutions and matrix products in bf16. Where oneDNN supports bf16
(`torch.ops.mkldnn._is_mkldnn_bf16_supported()`: AVX-512 or AMX CPUs) they go to its kernels;
elsewhere a bf16 convolution falls to ATen's generic `_slow_conv2d`, and a training step of
ConvPool-CNN-C (width 32, batch 100) took 4.7 s against 0.32 s in fp32 (2-core AMD EPYC, AVX2 only,
2026-11-30; results/steps/README.md): a 20-epoch run ~13 h instead of ~1 h.

What runs instead, for the ops in EMULATED_OPS under CPU autocast: every floating input is rounded
to bf16 (as autocast casts it), widened back to fp32 (exactly), the op runs in fp32 with autocast
off, and its output is rounded to bf16 (as a bf16 op returns it). That is what oneDNN's bf16
kernels compute: products of bf16 values are exact in fp32, they are summed in fp32, the result is
rounded to bf16. Only the order of the fp32 sums differs, as it does between any two convolution
algorithms. Gradients flow through the same casts, so they are rounded where bf16 autocast rounds
them (a bf16 grad_input, a weight gradient rounded to bf16 then widened to the fp32 parameter).

Other autocast ops (scaled_dot_product_attention, prelu, ...) keep torch's own route. The
emulation is a process-wide kernel for the AutocastCPU dispatch key, installed for as long as
`emulate_bf16_autocast()` is entered (re-entrant) and removed on exit.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Optional

import torch

# aten ops (name.overload) whose bf16 autocast kernels have no oneDNN route without bf16 support:
# the convolutions and matrix products, which set a step's time.
EMULATED_OPS = (
    "conv1d", "conv1d.padding", "conv2d", "conv2d.padding", "conv3d", "conv3d.padding",
    "conv_transpose1d", "conv_transpose2d.input", "conv_transpose3d.input",
    "linear", "matmul", "mm", "bmm", "addmm", "baddbmm",
)
ROUTES = ("native", "emulated")

_library: Optional[torch.library.Library] = None
_depth = 0


def bf16_route(device: torch.device) -> str:
    """How bf16 autocast's matrix ops run on `device`: "native" (CUDA, or a CPU oneDNN runs bf16
    on) or "emulated" (fp32 on bf16-rounded operands, this module)."""
    if device.type != "cpu":
        return "native"
    return "native" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "emulated"


def _widen(value):
    # autocast casts floating tensors other than fp64; rounding through bf16 is that cast
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.to(torch.bfloat16).float()
    if isinstance(value, (list, tuple)):
        return type(value)(_widen(v) for v in value)
    return value


def _kernel(op):
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def emulated(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(keys):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if any(t.dtype == torch.float64 for t in tensors):  # autocast leaves fp64 ops alone
                return op(*args, **kwargs)
            return op(*_widen(args), **_widen(kwargs)).to(torch.bfloat16)

    return emulated


def _install() -> torch.library.Library:
    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        # "Overriding a previously registered kernel": that is the point; removed on exit
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        for name in EMULATED_OPS:
            op_name, _, overload = name.partition(".")
            op = getattr(getattr(torch.ops.aten, op_name), overload or "default")
            library.impl(name, _kernel(op), "AutocastCPU")
    return library


@contextlib.contextmanager
def emulate_bf16_autocast(enabled: bool = True) -> Iterator[bool]:
    """Within the block, CPU bf16 autocast runs EMULATED_OPS through the emulation (when
    `enabled`); yields whether it is on. Nested blocks share one installation."""
    global _library, _depth
    if not enabled:
        yield False
        return
    if _depth == 0:
        _library = _install()
    _depth += 1
    try:
        yield True
    finally:
        _depth -= 1
        if _depth == 0 and _library is not None:
            _library._destroy()
            _library = None
