"""LayerNorm in Triton, forward and backward: y = (x - mean) * r * g + b, r = rsqrt(var + eps).

Same structure as rmsnorm.py: fused rows compute mean and r in-tile; long rows get them in one
read of the row, merging per-chunk means and centred sums of squares (Chan et al.'s parallel
variance: no cancellation of a one-pass sum of squares), then reread it from L2 to apply. Backward:
dx = r * (g*dy - xhat * mean(g*dy*xhat) - mean(g*dy)), dW = sum dy*xhat, dB = sum dy, with
the parameter gradients reduced deterministically from per-program partials. Per-row parameters
(`channels` > 0, PER_ROW) as in rmsnorm.py: row r's gain and offset are g[r % channels] and
b[r % channels], so its dW and dB terms sum(dy*xhat) and sum(dy) are written per row and summed
per channel by the launcher.
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
def _ln_fwd(
    X, Y, W, B, MEAN, R, stride_x, stride_y, M, N, eps, channels,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, PER_ROW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Fused path: a tile of whole rows, read once; mean and centred squares from registers."""
    rows, row_ok = row_block(tl.program_id(0), M, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    x = load_tile(X, rows, cols, stride_x, mask, R.dtype.element_ty)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)
    r = tl.rsqrt(tl.sum(xc * xc, axis=1) / N + eps)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(R + rows, r, mask=row_ok)
    y = xc * r[:, None]
    if HAS_W:
        y = y * load_tile_param(W, rows, row_ok, cols, col_ok, channels, y.dtype, PER_ROW)
    if HAS_B:
        y = y + load_tile_param(B, rows, row_ok, cols, col_ok, channels, y.dtype, PER_ROW)
    store_tile(Y, rows, cols, stride_y, mask, y)


@triton.jit
def _ln_fwd_looped(
    X, Y, W, B, MEAN, R, stride_x, stride_y, M, N, eps, channels,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, PER_ROW: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
):
    """Looped path: each program takes rows in turn and makes two passes over a row. Statistics
    in one read: each chunk's mean and centred sum of squares are merged into the running ones
    (Chan et al.), which keeps the accuracy of a two-pass variance. Then y from x again (found
    in L2, evicted first). The launcher sizes the grid so the rows in flight fit in L2."""
    acc_dtype = R.dtype.element_ty
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        row = tl.zeros([], dtype=tl.int64) + row  # int64 offsets: rows past 2^31 elements
        x_row = X + row * stride_x
        count = tl.zeros([], dtype=acc_dtype)
        mean = tl.zeros([], dtype=acc_dtype)
        m2 = tl.zeros([], dtype=acc_dtype)
        for start in tl.range(0, N, BLOCK_N, num_stages=STAGES):
            cols = start + tl.arange(0, BLOCK_N)
            ok = cols < N
            x = tl.load(x_row + cols, mask=ok, other=0.0, eviction_policy="evict_last").to(acc_dtype)
            n_b = tl.minimum(N - start, BLOCK_N).to(acc_dtype)
            mean_b = tl.sum(x, axis=0) / n_b
            d = tl.where(ok, x - mean_b, 0.0)
            total = count + n_b
            delta = mean_b - mean
            mean += delta * (n_b / total)
            m2 += tl.sum(d * d, axis=0) + delta * delta * (count * n_b / total)
            count = total
        r = tl.rsqrt(m2 / N + eps)
        tl.store(MEAN + row, mean)
        tl.store(R + row, r)
        y_row = Y + row * stride_y
        for start in tl.range(0, N, BLOCK_N, num_stages=STAGES):
            cols = start + tl.arange(0, BLOCK_N)
            ok = cols < N
            x = tl.load(x_row + cols, mask=ok, other=0.0, eviction_policy="evict_first").to(acc_dtype)
            y = (x - mean) * r
            if HAS_W:
                y = y * load_chunk_param(W, row, cols, ok, channels, acc_dtype, PER_ROW)
            if HAS_B:
                y = y + load_chunk_param(B, row, cols, ok, channels, acc_dtype, PER_ROW)
            tl.store(y_row + cols, y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _ln_bwd_stats(
    DY, X, W, MEAN, R, C, stride_dy, stride_x, N, channels,
    HAS_W: tl.constexpr, PER_ROW: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
):
    """Looped path: per row, mean(g*dy*xhat) and mean(g*dy) into C[row, 0:2]."""
    row = tl.program_id(0).to(tl.int64)
    mean = tl.load(MEAN + row)
    r = tl.load(R + row)
    c1 = tl.zeros([BLOCK_N], dtype=C.dtype.element_ty)
    c2 = tl.zeros([BLOCK_N], dtype=C.dtype.element_ty)
    for start in tl.range(0, N, BLOCK_N, num_stages=STAGES):
        cols = start + tl.arange(0, BLOCK_N)
        ok = cols < N
        x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(c1.dtype)
        g = tl.load(DY + row * stride_dy + cols, mask=ok, other=0.0).to(c1.dtype)
        if HAS_W:
            g = g * load_chunk_param(W, row, cols, ok, channels, c1.dtype, PER_ROW)
        c1 += tl.where(ok, (x - mean) * r, 0.0) * g
        c2 += g
    tl.store(C + 2 * row, tl.sum(c1, axis=0) / N)
    tl.store(C + 2 * row + 1, tl.sum(c2, axis=0) / N)


@triton.jit
def _ln_bwd(
    DY, X, W, MEAN, R, C, DX, DW, DB, stride_dy, stride_x, stride_dx, M, N, channels,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, PER_ROW: tl.constexpr, FUSED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
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
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        r = tl.load(R + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * r[:, None], 0.0)
        if FUSED:
            # Only x, dy and the accumulators stay live across the row reductions: w is read
            # again (from L1) for dx, and g = dy*w is not kept. Registers go to 2+ CTAs per SM.
            g = dy * load_tile_param(W, rows, row_ok, cols, col_ok, channels, acc_dtype, PER_ROW) if HAS_W else dy
            c1 = tl.sum(xhat * g, axis=1) / N
            c2 = tl.sum(g, axis=1) / N
        else:
            c1 = tl.load(C + 2 * rows, mask=row_ok, other=0.0)
            c2 = tl.load(C + 2 * rows + 1, mask=row_ok, other=0.0)
        if HAS_W:
            w = load_tile_param(W, rows, row_ok, cols, col_ok, channels, acc_dtype, PER_ROW, "evict_last")
            dx = (dy * w - xhat * c1[:, None] - c2[:, None]) * r[:, None]
        else:
            dx = (dy - xhat * c1[:, None] - c2[:, None]) * r[:, None]
        store_tile(DX, rows, cols, stride_dx, mask, dx)
        if PER_ROW:
            store_partials(DW, DB, tl.sum(dy * xhat, axis=1), tl.sum(dy, axis=1), tl.program_id(1), M,
                           rows, row_ok, HAS_W, HAS_B)
        else:
            if HAS_W:
                dw += dy * xhat
            if HAS_B:
                db += dy
    if not PER_ROW:
        store_partials(DW, DB, tl.sum(dw, axis=0), tl.sum(db, axis=0), pid, N, cols, col_ok, HAS_W, HAS_B)


def layer_norm_forward(x, weight, bias, eps, channels=0):
    m, n = x.shape
    check_channels(channels, m)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    mean = torch.empty(m, dtype=compute_dtype(x), device=x.device)
    r = torch.empty_like(mean)
    if m == 0:
        return y, mean, r
    tile = tile_for(n, backward=False, itemsize=x.element_size())
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, PER_ROW=channels > 0)
    if tile.fused:
        _ln_fwd[(tile.row_tiles(m),)](
            x, y, weight, bias, mean, r, x.stride(0), y.stride(0), m, n, eps, channels, **flags,
            BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, num_warps=tile.num_warps,
        )
    else:
        _ln_fwd_looped[(looped_row_programs(x.device, m, n * x.element_size()),)](
            x, y, weight, bias, mean, r, x.stride(0), y.stride(0), m, n, eps, channels, **flags,
            BLOCK_N=tile.block_n, STAGES=tile.num_stages, num_warps=tile.num_warps,
        )
    return y, mean, r


def layer_norm_backward(dy, x, weight, mean, r, has_bias, channels=0):
    m, n = x.shape
    check_channels(channels, m)
    has_w = weight is not None
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return dx, empty_param_grad(x, has_w, channels), empty_param_grad(x, has_bias, channels)
    tile = tile_for(n, backward=True, itemsize=x.element_size(), param_grads=int(has_w) + int(has_bias))
    coef = None
    if not tile.fused:
        coef = torch.empty((m, 2), dtype=compute_dtype(x), device=x.device)
        _ln_bwd_stats[(m,)](
            dy, x, weight, mean, r, coef, dy.stride(0), x.stride(0), n, channels,
            HAS_W=has_w, PER_ROW=channels > 0, BLOCK_N=stats_block(n), STAGES=tile.num_stages,
            num_warps=tile.num_warps,
        )
    options = dict(
        HAS_W=has_w, HAS_B=has_bias, PER_ROW=channels > 0, FUSED=tile.fused, BLOCK_M=tile.block_m,
        BLOCK_N=tile.block_n, STAGES=tile.num_stages, num_warps=tile.num_warps, maxnreg=tile.maxnreg,
    )

    def args(dw_part, db_part):
        return (dy, x, weight, mean, r, coef, dx, dw_part, db_part,
                dy.stride(0), x.stride(0), dx.stride(0), m, n, channels)

    ctas = fitting_ctas(_ln_bwd, args(placeholder_partials(x, has_w), placeholder_partials(x, has_bias)),
                        options, x.device)
    programs = persistent_programs(x.device, tile.row_tiles(m), tile.col_tiles(n), ctas)
    dw_part = param_grad_partials(x, has_w, programs, tile.col_tiles(n), channels)
    db_part = param_grad_partials(x, has_bias, programs, tile.col_tiles(n), channels)
    _ln_bwd[(programs, tile.col_tiles(n))](*args(dw_part, db_part), **options)
    return dx, reduce_partials(dw_part, channels), reduce_partials(db_part, channels)
