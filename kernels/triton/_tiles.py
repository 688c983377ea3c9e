"""Triton helpers every norm kernel uses to move (rows x columns) tiles, parameters and dW/dB partials."""
import triton
import triton.language as tl


@triton.jit
def row_block(tile, M, BLOCK_M: tl.constexpr):
    """Row indices of a tile (int64: offsets past 2^31 elements) and which of them exist."""
    rows = (tile * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    return rows, rows < M


@triton.jit
def load_tile(PTR, rows, cols, stride, mask, dtype: tl.constexpr):
    return tl.load(PTR + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(dtype)


@triton.jit
def store_tile(PTR, rows, cols, stride, mask, value):
    tl.store(PTR + rows[:, None] * stride + cols[None, :], value.to(PTR.dtype.element_ty), mask=mask)


@triton.jit
def load_tile_param(PTR, rows, row_ok, cols, col_ok, channels, dtype: tl.constexpr, PER_ROW: tl.constexpr,
                    eviction_policy: tl.constexpr = ""):
    """A weight or bias broadcast over a tile: one per column ([1, BLOCK_N]), or with PER_ROW one
    per row ([BLOCK_M, 1]: row r takes element r % channels, its channel)."""
    if PER_ROW:
        p = tl.load(PTR + rows % channels, mask=row_ok, other=0.0, eviction_policy=eviction_policy)
        p = p.to(dtype)[:, None]
    else:
        p = tl.load(PTR + cols, mask=col_ok, other=0.0, eviction_policy=eviction_policy).to(dtype)[None, :]
    return p


@triton.jit
def load_chunk_param(PTR, row, cols, ok, channels, dtype: tl.constexpr, PER_ROW: tl.constexpr):
    """A weight or bias for a chunk of one row (the looped kernels): one per column, or with
    PER_ROW the row's single value (element row % channels)."""
    if PER_ROW:
        p = tl.load(PTR + row % channels).to(dtype)
    else:
        p = tl.load(PTR + cols, mask=ok, other=0.0).to(dtype)
    return p


@triton.jit
def store_partials(DW, DB, dw, db, index, width, offsets, ok, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """Row `index` of the [*, width] dW / dB partial buffers, at `offsets`: a program's per-column
    sums ([programs, N]) or, for per-row parameters, a column tile's per-row sums ([col_tiles, M])."""
    part = index.to(tl.int64) * width + offsets
    if HAS_W:
        tl.store(DW + part, dw, mask=ok)
    if HAS_B:
        tl.store(DB + part, db, mask=ok)
