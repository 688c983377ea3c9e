"""LayerNorm in Triton, forward and backward: y = (x - mean) * r * g + b, r = rsqrt(var + eps).

Same structure as rmsnorm.py: fused rows compute mean and r in-tile; long rows get them from
a looped statistics kernel (two passes over the row -- mean, then centred squares -- which
avoids the cancellation of a one-pass sum of squares). Backward:
dx = r * (g*dy - xhat * mean(g*dy*xhat) - mean(g*dy)), dW = sum dy*xhat, dB = sum dy, with
the parameter gradients reduced deterministically from per-program partials.
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
def _ln_fwd_stats(X, MEAN, R, stride_x, N, eps, BLOCK_N: tl.constexpr):
    """Looped path: mean and r per row."""
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_N], dtype=R.dtype.element_ty)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        acc += tl.load(X + row * stride_x + cols, mask=cols < N, other=0.0).to(acc.dtype)
    mean = tl.sum(acc, axis=0) / N
    acc = tl.zeros([BLOCK_N], dtype=R.dtype.element_ty)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        x = tl.load(X + row * stride_x + cols, mask=cols < N, other=0.0).to(acc.dtype)
        xc = tl.where(cols < N, x - mean, 0.0)
        acc += xc * xc
    tl.store(MEAN + row, mean)
    tl.store(R + row, tl.rsqrt(tl.sum(acc, axis=0) / N + eps))


@triton.jit
def _ln_fwd(
    X, Y, W, B, MEAN, R, stride_x, stride_y, M, N, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, FUSED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows, row_ok = row_block(tl.program_id(0), M, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    x = load_tile(X, rows, cols, stride_x, mask, R.dtype.element_ty)
    if FUSED:
        mean = tl.sum(x, axis=1) / N
        xc = tl.where(mask, x - mean[:, None], 0.0)
        r = tl.rsqrt(tl.sum(xc * xc, axis=1) / N + eps)
        tl.store(MEAN + rows, mean, mask=row_ok)
        tl.store(R + rows, r, mask=row_ok)
    else:
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        r = tl.load(R + rows, mask=row_ok, other=0.0)
        xc = x - mean[:, None]
    y = xc * r[:, None]
    if HAS_W:
        y = y * load_columns(W, cols, col_ok, y.dtype)
    if HAS_B:
        y = y + load_columns(B, cols, col_ok, y.dtype)
    store_tile(Y, rows, cols, stride_y, mask, y)


@triton.jit
def _ln_bwd_stats(
    DY, X, W, MEAN, R, C, stride_dy, stride_x, N, HAS_W: tl.constexpr, BLOCK_N: tl.constexpr
):
    """Looped path: per row, mean(g*dy*xhat) and mean(g*dy) into C[row, 0:2]."""
    row = tl.program_id(0).to(tl.int64)
    mean = tl.load(MEAN + row)
    r = tl.load(R + row)
    c1 = tl.zeros([BLOCK_N], dtype=C.dtype.element_ty)
    c2 = tl.zeros([BLOCK_N], dtype=C.dtype.element_ty)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        ok = cols < N
        x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(c1.dtype)
        g = tl.load(DY + row * stride_dy + cols, mask=ok, other=0.0).to(c1.dtype)
        if HAS_W:
            g = g * tl.load(W + cols, mask=ok, other=0.0).to(c1.dtype)
        c1 += tl.where(ok, (x - mean) * r, 0.0) * g
        c2 += g
    tl.store(C + 2 * row, tl.sum(c1, axis=0) / N)
    tl.store(C + 2 * row + 1, tl.sum(c2, axis=0) / N)


@triton.jit
def _ln_bwd(
    DY, X, W, MEAN, R, C, DX, DW, DB, stride_dy, stride_x, stride_dx, M, N,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, FUSED: tl.constexpr,
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
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        r = tl.load(R + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * r[:, None], 0.0)
        g = dy * w if HAS_W else dy
        if FUSED:
            c1 = tl.sum(xhat * g, axis=1) / N
            c2 = tl.sum(g, axis=1) / N
        else:
            c1 = tl.load(C + 2 * rows, mask=row_ok, other=0.0)
            c2 = tl.load(C + 2 * rows + 1, mask=row_ok, other=0.0)
        store_tile(DX, rows, cols, stride_dx, mask, (g - xhat * c1[:, None] - c2[:, None]) * r[:, None])
        if HAS_W:
            dw += tl.sum(dy * xhat, axis=0)
        if HAS_B:
            db += tl.sum(dy, axis=0)
    store_partials(DW, DB, dw, db, pid, N, cols, col_ok, HAS_W, HAS_B)


def layer_norm_forward(x, weight, bias, eps):
    m, n = x.shape
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    mean = torch.empty(m, dtype=compute_dtype(x), device=x.device)
    r = torch.empty_like(mean)
    if m == 0:
        return y, mean, r
    tile = tile_for(n, backward=False)
    if not tile.fused:
        _ln_fwd_stats[(m,)](
            x, mean, r, x.stride(0), n, eps, BLOCK_N=stats_block(n), num_warps=tile.num_warps
        )
    _ln_fwd[(tile.row_tiles(m), tile.col_tiles(n))](
        x, y, weight, bias, mean, r, x.stride(0), y.stride(0), m, n, eps,
        HAS_W=weight is not None, HAS_B=bias is not None, FUSED=tile.fused,
        BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, num_warps=tile.num_warps,
    )
    return y, mean, r


def layer_norm_backward(dy, x, weight, mean, r, has_bias):
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
            coef = torch.empty((m, 2), dtype=compute_dtype(x), device=x.device)
            _ln_bwd_stats[(m,)](
                dy, x, weight, mean, r, coef, dy.stride(0), x.stride(0), n,
                HAS_W=has_w, BLOCK_N=stats_block(n), num_warps=tile.num_warps,
            )
        _ln_bwd[(programs, tile.col_tiles(n))](
            dy, x, weight, mean, r, coef, dx, dw_part, db_part,
            dy.stride(0), x.stride(0), dx.stride(0), m, n,
            HAS_W=has_w, HAS_B=has_bias, FUSED=tile.fused,
            BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, num_warps=tile.num_warps,
        )
    return dx, reduce_partials(dw_part), reduce_partials(db_part)
