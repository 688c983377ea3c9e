"""The public norm ops: argument checks, backend dispatch, and torch.library registration.

`backend="torch"` runs the pure-torch reference (autograd through torch ops). A kernel backend
is reached two ways, with the same kernels and the same results:

- eager calls (the common case: training without torch.compile) go straight to the kernels
  through an autograd node: on CPU one written in C++ with the kernels (cpu.rms_norm /
  cpu.layer_norm, no Python in the backward), on GPU a plain `torch.autograd.Function`. The
  `torch.library.custom_op` pair costs more per call than the kernel itself at small shapes:
  a forward + backward of a 2 x 8 input took 0.21 ms through it, 0.11 ms through a Python
  Function and 0.086 ms through the C++ node (F.layer_norm: 0.071), and 1024 x 256 took 0.34
  against 0.19 ms (scripts/cpu_kernel_breakdown.py, 2-core AMD EPYC, AVX2, 2026-11-30);
- under torch.compile (and any tracing: a dispatch mode, a tensor subclass) they go through one
  pair of custom ops per norm (forward, backward), registered with autograd and fake
  implementations so `torch.compile(fullgraph=True)` traces them as single nodes and CUDA
  graphs can capture them.

A kernel backend is a module with four functions on 2D row-major views (last dim contiguous,
any row stride):

    rms_norm_forward(x, weight, bias, eps, k, eps_outside, channels)         -> y, rstd
    rms_norm_backward(dy, x, weight, rstd, eps, k, eps_outside, has_bias, channels) -> dx, dw, db
    layer_norm_forward(x, weight, bias, eps, channels)                       -> y, mean, rstd
    layer_norm_backward(dy, x, weight, mean, rstd, has_bias, channels)       -> dx, dw, db

(dw / db are None where there is no weight / bias.) Statistics (rstd, mean) and dw / db are
fp32 -- fp64 for fp64 inputs, so gradcheck sees full precision (`reference.compute_dtype`).
`channels` = 0 (the default): weight and bias hold one value per feature (N); > 0: one per row, row r taking
element r % channels -- the public ops' `affine_dim=-2`, a (..., C, L) input normalized over L
with a gain and offset per C (conv maps normalized over their positions), so the per-channel
affine is fused into the kernels instead of costing torch ops of its own.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import cpu as cpu_kernels
from . import reference

BACKENDS = ("auto", "triton", "cpu", "torch")
AFFINE_DIMS = (-1, -2)
EPS_MODES = ("inside", "outside")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------- checks
def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"x must be a floating tensor (float16, bfloat16, float32, float64), got {x.dtype}"
        )
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have a last dim of size >= 1 to normalize over, got shape {tuple(x.shape)}")


def check_affine_dim(affine_dim: int, x: Optional[Tensor] = None) -> None:
    if isinstance(affine_dim, bool) or affine_dim not in AFFINE_DIMS:
        raise ValueError(f"affine_dim must be one of {AFFINE_DIMS}, got {affine_dim!r}")
    if x is not None and affine_dim == -2 and x.dim() < 2:
        raise ValueError(f"affine_dim=-2 needs x of shape (..., C, L), got shape {tuple(x.shape)}")


def _check_param(name: str, p: Optional[Tensor], x: Tensor, affine_dim: int = -1) -> None:
    if p is None:
        return
    n = x.shape[affine_dim]
    if not isinstance(p, Tensor) or tuple(p.shape) != (n,):
        shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
        dim = "last dim" if affine_dim == -1 else "dim -2 (affine_dim=-2)"
        raise ValueError(f"{name} must have shape ({n},) to match x's {dim}, got {shape}")
    if p.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor, got {p.dtype}")
    if p.device != x.device:
        raise ValueError(f"{name} is on {p.device} but x is on {x.device}; they must share a device")


def check_eps(eps: float) -> None:
    # a chained comparison, not math.isfinite: dynamo traces it when eps is a symbolic float
    if not isinstance(eps, (int, float)) or not (0 < eps < math.inf):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")


def check_eps_mode(eps_mode: str) -> None:
    if eps_mode not in EPS_MODES:
        raise ValueError(f"eps_mode must be one of {EPS_MODES}, got {eps_mode!r}")


def check_partial(partial: float, n: int | None = None) -> int | None:
    """Validate the partial ratio p; with the row length n, also return k = floor(p*n) >= 1."""
    if not isinstance(partial, (int, float)) or not (0.0 < partial <= 1.0):
        raise ValueError(f"partial must be in (0, 1], got {partial!r}")
    if n is None:
        return None
    k = reference.partial_size(n, partial)
    if k < 1:
        raise ValueError(
            f"partial={partial} keeps k = floor(partial * {n}) = {k} features; k must be >= 1 "
            f"(use partial >= {1.0 / n:.6g} for rows of {n})"
        )
    return k


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, x: Tensor) -> str:
    """Map a requested backend to the one that runs: 'triton', 'cpu' or 'torch'."""
    check_backend(backend)
    if backend == "auto":
        if x.is_cuda:
            return "triton"
        # the fused C++ kernels when they build; without a compiler (or ninja) available() warns once
        # and this falls back to torch; a compiler that fails to build them raises (KernelBuildError)
        return "cpu" if x.device.type == "cpu" and cpu_kernels.available() else "torch"
    if backend == "cpu":
        if x.device.type != "cpu":
            raise ValueError(
                f"backend='cpu' needs a CPU tensor (x is on {x.device}); use backend='auto' instead"
            )
        if not cpu_kernels.available():  # a compiler that fails raises its own one-line error here
            raise ValueError(
                f"backend='cpu' is unavailable: its kernels cannot be built here ({cpu_kernels.build_error()}); "
                "use backend='torch' or 'auto'"
            )
    if backend == "triton" and not x.is_cuda and not _interpreting():
        raise ValueError(
            "backend='triton' needs a CUDA tensor, or TRITON_INTERPRET=1 to run the kernels on "
            f"the CPU (x is on {x.device}); use backend='auto' or 'torch' instead"
        )
    return backend


# LayerNorm on the portable C++ build. The DEFAULT capability build (at::vec's generic code: any
# non-x86 CPU, or an x86 one without AVX2) is routed by backend="auto" like this:
# - RMSNorm / pRMSNorm stay on the C++ kernels: torch has no fused op for them, and its path (the
#   "torch" backend, several ops and an autograd graph) lost to the DEFAULT build on x86 (4096x512:
#   6.4 against 10.3 ms fwd+bwd, results/bench/cpu_kernel_ratios/README.md);
# - LayerNorm goes to F.layer_norm, torch's own fused kernel: on x86 the DEFAULT build's LayerNorm
#   took 3.7x its time (9.00 against 2.44 ms, same README; the "torch" backend, the unfused
#   reference, is slower than both -- ~6x F.layer_norm's time at 4096x512 in a probe on that
#   host -- so it is not where LayerNorm goes). On aarch64 the DEFAULT build
#   is at::vec's NEON code, unmeasured; F.layer_norm there is torch's own at::vec kernel compiled
#   in torch's own build (NEON, or SVE where torch dispatches to it), so ours has nothing it lacks:
#   F.layer_norm too, until a measurement says otherwise.
# Only where F.layer_norm takes the parameters as they are (all of one dtype: x's, or fp32 for
# fp16/bf16 x) -- other mixes keep the C++ kernels. backend="cpu" always runs the C++ kernels.
# The AVX2 / AVX-512 builds beat F.layer_norm and keep every op.
NATIVE_LAYER_NORM_BUILDS = ("DEFAULT",)


def _native_layer_norm_takes(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> bool:
    dtypes = {p.dtype for p in (weight, bias) if p is not None}
    if not dtypes:
        return True
    if len(dtypes) > 1:
        return False
    (dtype,) = dtypes
    return dtype == x.dtype or (dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16))


def layer_norm_backend(backend: str, x: Tensor, weight: Optional[Tensor] = None,
                       bias: Optional[Tensor] = None) -> str:
    """resolve_backend for layer_norm: its answer, or "native" (F.layer_norm) where backend="auto"
    would run a C++ build whose LayerNorm loses to it (NATIVE_LAYER_NORM_BUILDS)."""
    resolved = resolve_backend(backend, x)
    if (backend == "auto" and resolved == "cpu" and cpu_kernels.loaded_capability() in NATIVE_LAYER_NORM_BUILDS
            and _native_layer_norm_takes(x, weight, bias)):
        return "native"
    return resolved


def _kernels(backend: str):
    if backend == "triton":
        from .triton import backend as module
        return module
    if backend == "cpu":
        return cpu_kernels
    raise ValueError(f"no kernel module for backend {backend!r}")


# ---------------------------------------------------------------------------- layout
def as_rows(t: Tensor) -> Tensor:
    """A 2D (rows, N) view with a contiguous last dim; copies only when no such view exists."""
    n = t.shape[-1]
    if t.stride(-1) != 1 and t.numel() > 0:
        t = t.contiguous()
    if t.dim() == 2:
        return t
    try:
        return t.view(-1, n)
    except RuntimeError:
        return t.contiguous().view(-1, n)


def _dense(p: Optional[Tensor]) -> Optional[Tensor]:
    """A parameter the kernels can index as p[j]: the kernels read weight and bias at unit
    stride, so a strided or expanded view (stride 0) is copied. Parameters are N elements,
    so the copy is free next to the M x N input; autograd carries the gradient back to the view."""
    return p if p is None or p.is_contiguous() else p.contiguous()


def _grad_rows(dy: Tensor, shape) -> Tensor:
    return as_rows(dy.reshape(shape) if dy.shape != shape else dy)


# ---------------------------------------------------------------------------- kernel calls
# The kernels on any-shaped tensors: row views in, the input's shape out. Both routes (the
# eager Function and the custom ops) call these, so they cannot drift apart.
def _rms_forward(x, weight, bias, eps, k, eps_outside, channels, backend):
    y, rstd = _kernels(backend).rms_norm_forward(as_rows(x), weight, bias, eps, k, eps_outside, channels)
    return y.view(x.shape), rstd.view(x.shape[:-1])


def _rms_backward(dy, x, weight, rstd, eps, k, eps_outside, has_bias, channels, backend):
    dx, dw, db = _kernels(backend).rms_norm_backward(
        _grad_rows(dy, x.shape), as_rows(x), weight, rstd.reshape(-1), eps, k, eps_outside, has_bias, channels
    )
    return dx.view(x.shape), dw, db


def _ln_forward(x, weight, bias, eps, channels, backend):
    y, mean, rstd = _kernels(backend).layer_norm_forward(as_rows(x), weight, bias, eps, channels)
    return y.view(x.shape), mean.view(x.shape[:-1]), rstd.view(x.shape[:-1])


def _ln_backward(dy, x, weight, mean, rstd, has_bias, channels, backend):
    dx, dw, db = _kernels(backend).layer_norm_backward(
        _grad_rows(dy, x.shape), as_rows(x), weight, mean.reshape(-1), rstd.reshape(-1), has_bias, channels
    )
    return dx.view(x.shape), dw, db


def _channels(x: Tensor, affine_dim: int) -> int:
    """The kernels' `channels` argument: 0 for per-feature parameters, else C of (..., C, L)."""
    return x.shape[-2] if affine_dim == -2 else 0


def _no_channels(x: Tensor, affine_dim: int) -> bool:
    """Per-channel parameters on an input with C = 0 channels: the kernels would read channels = 0
    as per-feature parameters, so the (empty) result comes from the reference instead."""
    return affine_dim == -2 and x.shape[-2] == 0


def _param_grad(g: Optional[Tensor], present: bool, like: Optional[Tensor]):
    # kernels return parameter gradients in the compute dtype; cast to the parameter's
    if not present:
        return None
    return g.to(like.dtype) if like is not None else g


# ---------------------------------------------------------------------------- eager route
EAGER_FAST_PATH = True  # False sends eager calls through the custom ops too (tests compare both)


def _eager(x: Tensor) -> bool:
    """Whether this call may take the plain autograd.Function: not while torch.compile traces
    (it needs the custom ops), nor under a dispatch mode (fake tensors, make_fx) or for a tensor
    subclass, whose handlers know custom ops but not the raw kernels."""
    return (EAGER_FAST_PATH and not torch.compiler.is_compiling() and type(x) is Tensor
            and _get_current_dispatch_mode() is None)


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, k, eps_outside, channels, backend):
        y, rstd = _rms_forward(x, weight, bias, eps, k, eps_outside, channels, backend)
        ctx.save_for_backward(x, weight, bias, rstd)
        ctx.conf = (eps, k, eps_outside, channels, backend)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias, rstd = ctx.saved_tensors
        eps, k, eps_outside, channels, backend = ctx.conf
        dx, dw, db = _rms_backward(dy, x, weight, rstd, eps, k, eps_outside, bias is not None, channels, backend)
        return (dx, _param_grad(dw, weight is not None, weight), _param_grad(db, bias is not None, bias),
                None, None, None, None, None)


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, channels, backend):
        y, mean, rstd = _ln_forward(x, weight, bias, eps, channels, backend)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.conf = (channels, backend)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dw, db = _ln_backward(dy, x, weight, mean, rstd, bias is not None, *ctx.conf)
        return (dx, _param_grad(dw, weight is not None, weight), _param_grad(db, bias is not None, bias),
                None, None, None)


# ---------------------------------------------------------------------------- RMSNorm op
@torch.library.custom_op("repro::rms_norm_fwd", mutates_args=())
def _rms_norm_fwd(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
    eps: float, k: int, eps_outside: bool, channels: int, backend: str,
) -> tuple[Tensor, Tensor]:
    return _rms_forward(x, weight, bias, eps, k, eps_outside, channels, backend)


@_rms_norm_fwd.register_fake
def _(x, weight, bias, eps, k, eps_outside, channels, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(
        x.shape[:-1], dtype=reference.compute_dtype(x)
    )


@torch.library.custom_op("repro::rms_norm_bwd", mutates_args=())
def _rms_norm_bwd(
    dy: Tensor, x: Tensor, weight: Optional[Tensor], rstd: Tensor,
    eps: float, k: int, eps_outside: bool, has_bias: bool, channels: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _rms_backward(dy, x, weight, rstd, eps, k, eps_outside, has_bias, channels, backend)
    return dx, _or_empty(dw, x), _or_empty(db, x)


@_rms_norm_bwd.register_fake
def _(dy, x, weight, rstd, eps, k, eps_outside, has_bias, channels, backend):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        _fake_param_grad(weight is not None, x, channels),
        _fake_param_grad(has_bias, x, channels),
    )


def _or_empty(g: Optional[Tensor], x: Tensor) -> Tensor:
    # custom ops cannot return None; an empty tensor stands for "no such parameter"
    return g if g is not None else x.new_empty(0, dtype=reference.compute_dtype(x))


def _fake_param_grad(present: bool, x: Tensor, channels: int) -> Tensor:
    # kernels return parameter gradients in the compute dtype; autograd casts them to the parameter's
    size = (channels or x.shape[-1]) if present else 0
    return x.new_empty(size, dtype=reference.compute_dtype(x))


def _rms_setup(ctx, inputs, output):
    x, weight, bias, eps, k, eps_outside, channels, backend = inputs
    ctx.save_for_backward(x, weight, bias, output[1])
    ctx.conf = (eps, k, eps_outside, channels, backend)


def _rms_op_backward(ctx, dy, _drstd):
    x, weight, bias, rstd = ctx.saved_tensors
    eps, k, eps_outside, channels, backend = ctx.conf
    dx, dw, db = _rms_norm_bwd(dy, x, weight, rstd, eps, k, eps_outside, bias is not None, channels, backend)
    return (
        dx, _param_grad(dw, weight is not None, weight), _param_grad(db, bias is not None, bias),
        None, None, None, None, None,
    )


_rms_norm_fwd.register_autograd(_rms_op_backward, setup_context=_rms_setup)


# ---------------------------------------------------------------------------- LayerNorm op
@torch.library.custom_op("repro::layer_norm_fwd", mutates_args=())
def _layer_norm_fwd(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, channels: int, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    return _ln_forward(x, weight, bias, eps, channels, backend)


@_layer_norm_fwd.register_fake
def _(x, weight, bias, eps, channels, backend):
    stat = x.new_empty(x.shape[:-1], dtype=reference.compute_dtype(x))
    return torch.empty_like(x, memory_format=torch.contiguous_format), stat, torch.empty_like(stat)


@torch.library.custom_op("repro::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd(
    dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
    has_bias: bool, channels: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _ln_backward(dy, x, weight, mean, rstd, has_bias, channels, backend)
    return dx, _or_empty(dw, x), _or_empty(db, x)


@_layer_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, has_bias, channels, backend):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        _fake_param_grad(weight is not None, x, channels),
        _fake_param_grad(has_bias, x, channels),
    )


def _ln_setup(ctx, inputs, output):
    x, weight, bias, eps, channels, backend = inputs
    ctx.save_for_backward(x, weight, bias, output[1], output[2])
    ctx.conf = (channels, backend)


def _ln_op_backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = _layer_norm_bwd(dy, x, weight, mean, rstd, bias is not None, *ctx.conf)
    return (
        dx, _param_grad(dw, weight is not None, weight), _param_grad(db, bias is not None, bias),
        None, None, None,
    )


_layer_norm_fwd.register_autograd(_ln_op_backward, setup_context=_ln_setup)


# ---------------------------------------------------------------------------- autocast rule
# Under torch.autocast the norm ops run at the precision torch's own F.layer_norm runs at on that
# device, so every row of a table (LayerNorm, RMSNorm, pRMSNorm, BatchNorm) runs at one precision:
# - device types whose autocast policy lists layer_norm as an fp32 op (CUDA): x, weight and bias are
#   cast to fp32 and the output is fp32, as F.layer_norm's is there;
# - other device types (CPU: layer_norm is in no autocast list): the input's dtype is kept, so bf16
#   in gives bf16 out, as F.layer_norm's does.
# Either way the statistics are fp32 (every backend accumulates in fp32). The rule is applied in
# the public functions below, before dispatch, so it holds for every backend and every route to
# a kernel (the eager path and the custom ops torch.compile traces). tests/test_autocast.py checks
# it against F.layer_norm on the CPU; tests/test_gpu.py on CUDA.
AUTOCAST_FP32_DEVICES = ("cuda",)


def autocast_inputs(x: Tensor, *params: Optional[Tensor]) -> tuple:
    """(x, *params) as the norm ops see them under the autocast state of x's device."""
    device = x.device.type
    if device not in AUTOCAST_FP32_DEVICES or not torch.is_autocast_enabled(device):
        return (x, *params)
    if x.dtype == torch.float64:  # autocast leaves fp64 alone
        return (x, *params)
    return tuple(t.float() if t is not None and t.dtype != torch.float64 else t for t in (x, *params))


# ---------------------------------------------------------------------------- public API
def rms_norm(
    x: Tensor,
    weight: Optional[Tensor] = None,
    eps: float = 1e-6,
    *,
    partial: float = 1.0,
    eps_mode: str = "inside",
    backend: str = "auto",
    bias: Optional[Tensor] = None,
    affine_dim: int = -1,
) -> Tensor:
    """RMSNorm over the last dim; `partial` < 1 gives pRMSNorm (statistic from the first
    floor(partial*N) features). `eps_mode="inside"`: x*rsqrt(mean(x^2)+eps); `"outside"`:
    x/(sqrt(mean(x^2))+eps) as in the authors' PyTorch code. `bias` is the authors' optional
    offset (off by default). `affine_dim=-2`: x is (..., C, L), weight and bias have C values,
    one gain and offset per row of L (conv maps normalized over their positions), applied
    inside the kernels. Accumulates in fp32 and returns x's dtype."""
    _check_input(x)
    check_affine_dim(affine_dim, x)
    _check_param("weight", weight, x, affine_dim)
    _check_param("bias", bias, x, affine_dim)
    x, weight, bias = autocast_inputs(x, weight, bias)
    check_eps(eps)
    check_eps_mode(eps_mode)
    k = check_partial(partial, x.shape[-1])
    backend = resolve_backend(backend, x)
    if backend == "torch" or _no_channels(x, affine_dim):
        return reference.rms_norm(x, weight, bias, eps=eps, partial=partial, eps_mode=eps_mode, affine_dim=affine_dim)
    weight, bias = _dense(weight), _dense(bias)
    args = (x, weight, bias, float(eps), k, eps_mode == "outside", _channels(x, affine_dim), backend)
    if not _eager(x):
        return _rms_norm_fwd(*args)[0]
    if backend == "cpu":
        return cpu_kernels.rms_norm(*args[:-1])
    return _RMSNormFunction.apply(*args)


def layer_norm(
    x: Tensor,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    *,
    backend: str = "auto",
    affine_dim: int = -1,
) -> Tensor:
    """LayerNorm over the last dim (biased variance). `affine_dim=-2`: x is (..., C, L), weight
    and bias have C values, one per row of L, applied inside the kernels (as rms_norm's).
    Accumulates in fp32, returns x's dtype."""
    _check_input(x)
    check_affine_dim(affine_dim, x)
    _check_param("weight", weight, x, affine_dim)
    _check_param("bias", bias, x, affine_dim)
    x, weight, bias = autocast_inputs(x, weight, bias)
    check_eps(eps)
    backend = layer_norm_backend(backend, x, weight, bias)
    if _no_channels(x, affine_dim):
        backend = "torch"
    if backend == "native":
        if affine_dim == -2:  # each (sample, channel) row is one group: torch's fused group norm
            rows = x.reshape(-1, x.shape[-2], x.shape[-1])
            if weight is None and bias is not None:
                # a unit gain (no gradient asked of it): torch 2.9.1's group norm backward with a
                # bias but no weight fails ("tensor does not have a device"; seen on aarch64,
                # scripts/aarch64_check.sh), and the DEFAULT build -- aarch64's -- routes here
                weight = bias.new_ones(bias.shape)
            return F.group_norm(rows, x.shape[-2], weight, bias, eps).view(x.shape)
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    if backend == "torch":
        return reference.layer_norm(x, weight, bias, eps=eps, affine_dim=affine_dim)
    weight, bias = _dense(weight), _dense(bias)
    args = (x, weight, bias, float(eps), _channels(x, affine_dim), backend)
    if not _eager(x):
        return _layer_norm_fwd(*args)[0]
    if backend == "cpu":
        return cpu_kernels.layer_norm(*args[:-1])
    return _LayerNormFunction.apply(*args)
