"""Triton helpers every norm kernel uses to move (rows x columns) tiles and dW/dB partials."""
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
def load_columns(PTR, cols, ok, dtype: tl.constexpr):
    """A per-column parameter (weight, bias), broadcast over the tile's rows."""
    return tl.load(PTR + cols, mask=ok, other=0.0).to(dtype)[None, :]


@triton.jit
def store_partials(DW, DB, dw, db, pid, N, cols, col_ok, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """This program's row of the [programs, N] dW / dB partial buffers."""
    part = pid.to(tl.int64) * N + cols
    if HAS_W:
        tl.store(DW + part, dw, mask=col_ok)
    if HAS_B:
        tl.store(DB + part, db, mask=col_ok)
