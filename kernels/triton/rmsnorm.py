"""RMSNorm and partial RMSNorm (pRMSNorm) in Triton, forward and backward.

y = x * r * g (+ b), with r = rsqrt(ms + eps) ("inside") or 1 / (sqrt(ms) + eps) ("outside")
and ms = mean(x[:k]^2), k = floor(p * N) (k = N for RMSNorm).

What pRMSNorm saves in a fused kernel: the statistic only needs x[:k], but every output element
needs its x, so a one-pass kernel reads the whole row anyway. pRMSNorm then saves only the
k..N squares and adds of the reduction -- arithmetic, which a memory-bound kernel does not
wait on -- so fused pRMSNorm runs at RMSNorm's speed, not faster. Only the looped path (rows
too long for one register tile) reads less: its statistics pass touches k columns, not N.

Backward: dx_j = r g_j dy_j + [j < k] x_j c, with c = dr/dms * (2/k) * sum_i g_i dy_i x_i; the
dot product runs over the whole row, the statistic's term touches only x[:k]. dW and dB are
accumulated per program over a grid-stride loop of rows, then the [programs, N] partials are
summed in a fixed order: deterministic, no atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import compute_dtype
from ._tiles import load_columns, load_tile, row_block, store_partials, store_tile
from ._launch import (
    param_grad_partials, persistent_programs, reduce_partials, stats_block, tile_for,
)


@triton.jit
def _scale(ms, eps, EPS_OUTSIDE: tl.constexpr):
    if EPS_OUTSIDE:
        r = 1.0 / (tl.sqrt(ms) + eps)
    else:
        r = tl.rsqrt(ms + eps)
    return r


@triton.jit
def _stat_coef(dot, sum_sq_k, r, k, EPS_OUTSIDE: tl.constexpr):
    """c = dr/dms * (2/k) * dot, the weight of x[:k] in dx."""
    if EPS_OUTSIDE:
        # dr/dms = -r^2 / (2 rms); an all-zero prefix has rms = 0 and x[:k] = 0: the term is 0
        rms = tl.sqrt(sum_sq_k / k)
        coef = tl.where(rms > 0, -r * r * dot / (k * tl.where(rms > 0, rms, 1.0)), 0.0)
    else:
        coef = -r * r * r * dot / k  # dr/dms = -r^3 / 2
    return coef


@triton.jit
def _rms_fwd_stats(X, R, stride_x, k, eps, EPS_OUTSIDE: tl.constexpr, BLOCK_N: tl.constexpr):
    """Looped path: r per row from the first k columns only."""
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_N], dtype=R.dtype.element_ty)
    for start in range(0, k, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        x = tl.load(X + row * stride_x + cols, mask=cols < k, other=0.0).to(acc.dtype)
        acc += x * x
    tl.store(R + row, _scale(tl.sum(acc, axis=0) / k, eps, EPS_OUTSIDE))


@triton.jit
def _rms_fwd(
    X, Y, W, B, R, stride_x, stride_y, M, N, k, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, EPS_OUTSIDE: tl.constexpr, FUSED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows, row_ok = row_block(tl.program_id(0), M, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    x = load_tile(X, rows, cols, stride_x, mask, R.dtype.element_ty)
    if FUSED:
        x_k = tl.where(cols[None, :] < k, x, 0.0)
        r = _scale(tl.sum(x_k * x_k, axis=1) / k, eps, EPS_OUTSIDE)
        tl.store(R + rows, r, mask=row_ok)
    else:
        r = tl.load(R + rows, mask=row_ok, other=0.0)
    y = x * r[:, None]
    if HAS_W:
        y = y * load_columns(W, cols, col_ok, y.dtype)
    if HAS_B:
        y = y + load_columns(B, cols, col_ok, y.dtype)
    store_tile(Y, rows, cols, stride_y, mask, y)


@triton.jit
def _rms_bwd_stats(
    DY, X, W, R, C, stride_dy, stride_x, N, k,
    HAS_W: tl.constexpr, EPS_OUTSIDE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Looped path: the per-row coefficient c of x[:k] in dx."""
    row = tl.program_id(0).to(tl.int64)
    dot = tl.zeros([BLOCK_N], dtype=C.dtype.element_ty)
    sum_sq_k = tl.zeros([BLOCK_N], dtype=C.dtype.element_ty)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        ok = cols < N
        x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(dot.dtype)
        g = tl.load(DY + row * stride_dy + cols, mask=ok, other=0.0).to(dot.dtype)
        if HAS_W:
            g = g * tl.load(W + cols, mask=ok, other=0.0).to(dot.dtype)
        dot += g * x
        if EPS_OUTSIDE:
            x_k = tl.where(cols < k, x, 0.0)
            sum_sq_k += x_k * x_k
    r = tl.load(R + row)
    coef = _stat_coef(tl.sum(dot, axis=0), tl.sum(sum_sq_k, axis=0), r, k, EPS_OUTSIDE)
    tl.store(C + row, coef)


@triton.jit
def _rms_bwd(
    DY, X, W, R, C, DX, DW, DB, stride_dy, stride_x, stride_dx, M, N, k,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, EPS_OUTSIDE: tl.constexpr, FUSED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dx for a grid-stride run of row tiles in one column chunk; dW/dB partials for them."""
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc_dtype = R.dtype.element_ty
    if HAS_W:
        w = load_columns(W, cols, col_ok, acc_dtype)
    dw = tl.zeros([BLOCK_N], dtype=acc_dtype)
    db = tl.zeros([BLOCK_N], dtype=acc_dtype)
    for tile in range(pid, tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
        rows, row_ok = row_block(tile, M, BLOCK_M)
        mask = row_ok[:, None] & col_ok[None, :]
        x = load_tile(X, rows, cols, stride_x, mask, acc_dtype)
        dy = load_tile(DY, rows, cols, stride_dy, mask, acc_dtype)
        r = tl.load(R + rows, mask=row_ok, other=0.0)
        g = dy * w if HAS_W else dy
        x_k = tl.where(cols[None, :] < k, x, 0.0)
        if FUSED:
            coef = _stat_coef(
                tl.sum(g * x, axis=1), tl.sum(x_k * x_k, axis=1), r, k, EPS_OUTSIDE
            )
        else:
            coef = tl.load(C + rows, mask=row_ok, other=0.0)
        store_tile(DX, rows, cols, stride_dx, mask, g * r[:, None] + x_k * coef[:, None])
        if HAS_W:
            dw += tl.sum(dy * x * r[:, None], axis=0)
        if HAS_B:
            db += tl.sum(dy, axis=0)
    store_partials(DW, DB, dw, db, pid, N, cols, col_ok, HAS_W, HAS_B)


def rms_norm_forward(x, weight, bias, eps, k, eps_outside):
    m, n = x.shape
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    r = torch.empty(m, dtype=compute_dtype(x), device=x.device)
    if m == 0:
        return y, r
    tile = tile_for(n, backward=False)
    if not tile.fused:
        _rms_fwd_stats[(m,)](
            x, r, x.stride(0), k, eps, EPS_OUTSIDE=eps_outside, BLOCK_N=stats_block(n, k),
            num_warps=tile.num_warps,
        )
    _rms_fwd[(tile.row_tiles(m), tile.col_tiles(n))](
        x, y, weight, bias, r, x.stride(0), y.stride(0), m, n, k, eps,
        HAS_W=weight is not None, HAS_B=bias is not None, EPS_OUTSIDE=eps_outside,
        FUSED=tile.fused, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, num_warps=tile.num_warps,
    )
    return y, r


def rms_norm_backward(dy, x, weight, r, eps, k, eps_outside, has_bias):
    m, n = x.shape
    has_w = weight is not None
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    tile = tile_for(n, backward=True)
    programs = persistent_programs(x.device, tile.row_tiles(m), tile.col_tiles(n), n)
    dw_part = param_grad_partials(programs, x, has_w)
    db_part = param_grad_partials(programs, x, has_bias)
    if m > 0:
        coef = None
        if not tile.fused:
            coef = torch.empty(m, dtype=compute_dtype(x), device=x.device)
            _rms_bwd_stats[(m,)](
                dy, x, weight, r, coef, dy.stride(0), x.stride(0), n, k,
                HAS_W=has_w, EPS_OUTSIDE=eps_outside, BLOCK_N=stats_block(n),
                num_warps=tile.num_warps,
            )
        _rms_bwd[(programs, tile.col_tiles(n))](
            dy, x, weight, r, coef, dx, dw_part, db_part,
            dy.stride(0), x.stride(0), dx.stride(0), m, n, k,
            HAS_W=has_w, HAS_B=has_bias, EPS_OUTSIDE=eps_outside, FUSED=tile.fused,
            BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, num_warps=tile.num_warps,
        )
    return dx, reduce_partials(dw_part), reduce_partials(db_part)
