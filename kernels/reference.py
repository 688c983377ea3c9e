"""Pure-torch references of the norm ops: the math of docs/DESIGN.md, nothing else.

Every kernel backend is tested against these. They compute in fp32 (fp64 when the input is
fp64), return the input's dtype, and are plain autograd graphs, so `gradcheck` applies.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def partial_size(n: int, partial: float) -> int:
    """k = floor(partial * n): how many leading features pRMSNorm's statistic uses.

    The one place k is computed (kernels, drift monitor and analyses all call this). p is a
    decimal the user wrote (0.29, 0.0625), which a binary float only approximates: 0.29 * 100
    is 28.999999999999996, and a plain int() would keep 28 features. A product within 1e-9
    (relative) of an integer is that integer; anything else is floored, as the authors'
    int(p * d) does.
    """
    product = partial * n
    nearest = round(product)
    if abs(product - nearest) <= 1e-9 * max(1.0, abs(product)):
        return int(nearest)
    return math.floor(product)


def compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, affine_dim: int = -1) -> Tensor:
    """y * weight + bias, the parameters along the last dim (-1) or, one per row, along dim -2."""
    def shaped(p: Tensor) -> Tensor:
        return p.to(y.dtype).view(-1, 1) if affine_dim == -2 else p.to(y.dtype)

    if weight is not None:
        y = y * shaped(weight)
    if bias is not None:
        y = y + shaped(bias)
    return y


def rms_scale(x: Tensor, eps: float, k: int, eps_mode: str) -> Tensor:
    """The per-row factor that multiplies x: 1/RMS(x[..., :k]) with eps inside or outside the root."""
    ms = x[..., :k].square().mean(dim=-1, keepdim=True)
    if eps_mode == "inside":
        return torch.rsqrt(ms + eps)
    return 1.0 / (torch.sqrt(ms) + eps)


def rms_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-6,
    partial: float = 1.0,
    eps_mode: str = "inside",
    affine_dim: int = -1,
) -> Tensor:
    """RMSNorm (partial=1) and pRMSNorm (statistic from the first floor(partial*N) features).
    affine_dim=-2: x is (..., C, L) and weight / bias hold one value per C."""
    xc = x.to(compute_dtype(x))
    k = partial_size(x.shape[-1], partial)
    y = xc * rms_scale(xc, eps, k, eps_mode)
    return _affine(y, weight, bias, affine_dim).to(x.dtype)


def layer_norm(
    x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5,
    affine_dim: int = -1,
) -> Tensor:
    """LayerNorm over the last dim with the biased variance (affine_dim as rms_norm's)."""
    xc = x.to(compute_dtype(x))
    mean = xc.mean(dim=-1, keepdim=True)
    var = (xc - mean).square().mean(dim=-1, keepdim=True)
    y = (xc - mean) * torch.rsqrt(var + eps)
    return _affine(y, weight, bias, affine_dim).to(x.dtype)
