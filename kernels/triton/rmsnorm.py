"""RMSNorm and partial RMSNorm (pRMSNorm) in Triton, forward and backward.

y = x * r * g (+ b), with r = rsqrt(ms + eps) ("inside") or 1 / (sqrt(ms) + eps) ("outside")
and ms = mean(x[:k]^2), k = floor(p * N) (k = N for RMSNorm).

What pRMSNorm saves in a fused kernel: the statistic only needs x[:k], but every output element
needs its x, so a one-pass kernel reads the whole row anyway. pRMSNorm then saves only the
k..N squares and adds of the reduction -- arithmetic, which a memory-bound kernel does not
wait on -- so fused pRMSNorm runs at RMSNorm's speed, not faster. Only the looped path (rows
too long for one register tile) reads less: its statistics pass touches k columns, not N
(and the apply pass rereads the row from L2).

Backward: dx_j = r g_j dy_j + [j < k] x_j c, with c = dr/dms * (2/k) * sum_i g_i dy_i x_i; the
dot product runs over the whole row, the statistic's term touches only x[:k]. dW and dB are
accumulated per program (one resident program per CTA slot of the GPU) over a grid-stride loop
of row tiles, reduced over the tile's rows once after the loop, then the [programs, N] partials
are summed in a fixed order: deterministic, no atomics.

Per-row parameters (`channels` > 0, the PER_ROW specialization: row r scaled by g[r % channels]
and shifted by b[r % channels], a conv map's per-channel affine): g is one scalar per row, so the
row's dW and dB terms are r * sum(dy x) and sum(dy), written per row (and column tile) and summed
per channel by the launcher, again in a fixed order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import compute_dtype
from ._tiles import load_chunk_param, load_tile, load_tile_param, row_block, store_partials, store_tile
from ._launch import (
    check_channels, empty_param_grad, fitting_ctas, looped_row_programs, param_grad_partials, persistent_programs,
    placeholder_partials, reduce_partials, stats_block, tile_for,
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
def _rms_fwd(
    X, Y, W, B, R, stride_x, stride_y, M, N, k, eps, channels,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, EPS_OUTSIDE: tl.constexpr, PER_ROW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Fused path: a tile of whole rows, read once."""
    rows, row_ok = row_block(tl.program_id(0), M, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    x = load_tile(X, rows, cols, stride_x, mask, R.dtype.element_ty)
    x_k = tl.where(cols[None, :] < k, x, 0.0)
    r = _scale(tl.sum(x_k * x_k, axis=1) / k, eps, EPS_OUTSIDE)
    tl.store(R + rows, r, mask=row_ok)
    y = x * r[:, None]
    if HAS_W:
        y = y * load_tile_param(W, rows, row_ok, cols, col_ok, channels, y.dtype, PER_ROW)
    if HAS_B:
        y = y + load_tile_param(B, rows, row_ok, cols, col_ok, channels, y.dtype, PER_ROW)
    store_tile(Y, rows, cols, stride_y, mask, y)


@triton.jit
def _rms_fwd_looped(
    X, Y, W, B, R, stride_x, stride_y, M, N, k, eps, channels,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, EPS_OUTSIDE: tl.constexpr, PER_ROW: tl.constexpr,
    BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
):
    """Looped path: each program takes rows in turn and makes two passes over a row: the
    statistic from x[:k] (kept in L2 by evict_last), then y from x again (found in L2, evicted
    first), chunks pipelined. The launcher sizes the grid so the rows in flight fit in L2."""
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        row = tl.zeros([], dtype=tl.int64) + row  # int64 offsets: rows past 2^31 elements
        x_row = X + row * stride_x
        acc = tl.zeros([BLOCK_N], dtype=R.dtype.element_ty)
        for start in tl.range(0, k, BLOCK_N, num_stages=STAGES):
            cols = start + tl.arange(0, BLOCK_N)
            x = tl.load(x_row + cols, mask=cols < k, other=0.0, eviction_policy="evict_last").to(acc.dtype)
            acc += x * x
        r = _scale(tl.sum(acc, axis=0) / k, eps, EPS_OUTSIDE)
        tl.store(R + row, r)
        y_row = Y + row * stride_y
        for start in tl.range(0, N, BLOCK_N, num_stages=STAGES):
            cols = start + tl.arange(0, BLOCK_N)
            ok = cols < N
            y = tl.load(x_row + cols, mask=ok, other=0.0, eviction_policy="evict_first").to(acc.dtype) * r
            if HAS_W:
                y = y * load_chunk_param(W, row, cols, ok, channels, acc.dtype, PER_ROW)
            if HAS_B:
                y = y + load_chunk_param(B, row, cols, ok, channels, acc.dtype, PER_ROW)
            tl.store(y_row + cols, y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _rms_bwd_stats(
    DY, X, W, R, C, stride_dy, stride_x, N, k, channels,
    HAS_W: tl.constexpr, EPS_OUTSIDE: tl.constexpr, PER_ROW: tl.constexpr, BLOCK_N: tl.constexpr,
    STAGES: tl.constexpr,
):
    """Looped path: the per-row coefficient c of x[:k] in dx."""
    row = tl.program_id(0).to(tl.int64)
    dot = tl.zeros([BLOCK_N], dtype=C.dtype.element_ty)
    sum_sq_k = tl.zeros([BLOCK_N], dtype=C.dtype.element_ty)
    for start in tl.range(0, N, BLOCK_N, num_stages=STAGES):
        cols = start + tl.arange(0, BLOCK_N)
        ok = cols < N
        x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(dot.dtype)
        g = tl.load(DY + row * stride_dy + cols, mask=ok, other=0.0).to(dot.dtype)
        if HAS_W:
            g = g * load_chunk_param(W, row, cols, ok, channels, dot.dtype, PER_ROW)
        dot += g * x
        if EPS_OUTSIDE:
            x_k = tl.where(cols < k, x, 0.0)
            sum_sq_k += x_k * x_k
    r = tl.load(R + row)
    coef = _stat_coef(tl.sum(dot, axis=0), tl.sum(sum_sq_k, axis=0), r, k, EPS_OUTSIDE)
    tl.store(C + row, coef)


@triton.jit
def _rms_bwd(
    DY, X, W, R, C, DX, DW, DB, stride_dy, stride_x, stride_dx, M, N, k, channels,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, EPS_OUTSIDE: tl.constexpr, PER_ROW: tl.constexpr,
    FUSED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
):
    """dx for a grid-stride run of row tiles in one column chunk (STAGES tiles in flight);
    dW/dB accumulated per (row, column) of the tile and reduced over rows once, after the loop
    (PER_ROW: summed over each row's columns and written per row instead)."""
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc_dtype = R.dtype.element_ty
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=acc_dtype)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=acc_dtype)
    for tile in tl.range(pid, tl.cdiv(M, BLOCK_M), tl.num_programs(0), num_stages=STAGES):
        rows, row_ok = row_block(tile, M, BLOCK_M)
        mask = row_ok[:, None] & col_ok[None, :]
        x = load_tile(X, rows, cols, stride_x, mask, acc_dtype)
        dy = load_tile(DY, rows, cols, stride_dy, mask, acc_dtype)
        r = tl.load(R + rows, mask=row_ok, other=0.0)
        if FUSED:
            # Only x, dy and the accumulators stay live across the row reductions: w is read
            # again (from L1) for dx, and g = dy*w is not kept. Registers go to 2+ CTAs per SM.
            g = dy * load_tile_param(W, rows, row_ok, cols, col_ok, channels, acc_dtype, PER_ROW) if HAS_W else dy
            x_k = tl.where(cols[None, :] < k, x, 0.0)
            coef = _stat_coef(tl.sum(g * x, axis=1), tl.sum(x_k * x_k, axis=1), r, k, EPS_OUTSIDE)
        else:
            coef = tl.load(C + rows, mask=row_ok, other=0.0)
        if HAS_W:
            w = load_tile_param(W, rows, row_ok, cols, col_ok, channels, acc_dtype, PER_ROW, "evict_last")
            dx = dy * (w * r[:, None])
        else:
            dx = dy * r[:, None]
        store_tile(DX, rows, cols, stride_dx, mask, dx + tl.where(cols[None, :] < k, x * coef[:, None], 0.0))
        if PER_ROW:
            store_partials(DW, DB, tl.sum(dy * x, axis=1) * r, tl.sum(dy, axis=1), tl.program_id(1), M,
                           rows, row_ok, HAS_W, HAS_B)
        else:
            if HAS_W:
                dw += dy * x * r[:, None]
            if HAS_B:
                db += dy
    if not PER_ROW:
        store_partials(DW, DB, tl.sum(dw, axis=0), tl.sum(db, axis=0), pid, N, cols, col_ok, HAS_W, HAS_B)


def rms_norm_forward(x, weight, bias, eps, k, eps_outside, channels=0):
    m, n = x.shape
    check_channels(channels, m)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    r = torch.empty(m, dtype=compute_dtype(x), device=x.device)
    if m == 0:
        return y, r
    tile = tile_for(n, backward=False, itemsize=x.element_size())
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, EPS_OUTSIDE=eps_outside, PER_ROW=channels > 0)
    if tile.fused:
        _rms_fwd[(tile.row_tiles(m),)](
            x, y, weight, bias, r, x.stride(0), y.stride(0), m, n, k, eps, channels, **flags,
            BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, num_warps=tile.num_warps,
        )
    else:
        _rms_fwd_looped[(looped_row_programs(x.device, m, n * x.element_size()),)](
            x, y, weight, bias, r, x.stride(0), y.stride(0), m, n, k, eps, channels, **flags,
            BLOCK_N=tile.block_n, STAGES=tile.num_stages, num_warps=tile.num_warps,
        )
    return y, r


def rms_norm_backward(dy, x, weight, r, eps, k, eps_outside, has_bias, channels=0):
    m, n = x.shape
    check_channels(channels, m)
    has_w = weight is not None
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return dx, empty_param_grad(x, has_w, channels), empty_param_grad(x, has_bias, channels)
    tile = tile_for(n, backward=True, itemsize=x.element_size(), param_grads=int(has_w) + int(has_bias))
    coef = None
    if not tile.fused:
        coef = torch.empty(m, dtype=compute_dtype(x), device=x.device)
        _rms_bwd_stats[(m,)](
            dy, x, weight, r, coef, dy.stride(0), x.stride(0), n, k, channels,
            HAS_W=has_w, EPS_OUTSIDE=eps_outside, PER_ROW=channels > 0, BLOCK_N=stats_block(n),
            STAGES=tile.num_stages, num_warps=tile.num_warps,
        )
    options = dict(
        HAS_W=has_w, HAS_B=has_bias, EPS_OUTSIDE=eps_outside, PER_ROW=channels > 0, FUSED=tile.fused,
        BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, STAGES=tile.num_stages,
        num_warps=tile.num_warps, maxnreg=tile.maxnreg,
    )

    def args(dw_part, db_part):
        return (dy, x, weight, r, coef, dx, dw_part, db_part,
                dy.stride(0), x.stride(0), dx.stride(0), m, n, k, channels)

    ctas = fitting_ctas(_rms_bwd, args(placeholder_partials(x, has_w), placeholder_partials(x, has_bias)),
                        options, x.device)
    programs = persistent_programs(x.device, tile.row_tiles(m), tile.col_tiles(n), ctas)
    dw_part = param_grad_partials(x, has_w, programs, tile.col_tiles(n), channels)
    db_part = param_grad_partials(x, has_bias, programs, tile.col_tiles(n), channels)
    _rms_bwd[(programs, tile.col_tiles(n))](*args(dw_part, db_part), **options)
    return dx, reduce_partials(dw_part, channels), reduce_partials(db_part, channels)
