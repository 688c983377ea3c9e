"""Launch geometry shared by the norm kernels: tile shapes, warps, the persistent backward grid.

Every kernel works on a 2D (rows, N) view whose last dim is contiguous. A row that fits one
register tile is normalized in one pass ("fused"); longer rows first get their per-row
statistics from a looped kernel, then an elementwise "apply" kernel tiles (rows, column chunk).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ..reference import compute_dtype

# Longest row held whole in registers. Measured with ptxas for sm_90 (register_report.py):
# with 32 warps (<= 64 registers a thread) the forward fits 16K columns and the backward, which
# keeps x, dy, w and the dW/dB accumulators live, 8K (LayerNorm's bf16 backward spills 4 bytes
# there: a few bytes to L1 cost far less than the looped path's second pass over the row).
# flash-attn's 64 KB rule would allow 32K bf16 columns; that spills. Longer rows take the looped
# path. tests/test_triton_compile.py keeps these limits honest.
FUSED_FWD_N = 16384
FUSED_BWD_N = 8192
# Elements a thread handles: the backward keeps twice the live values, so gets twice the threads.
ELEMENTS_PER_WARP = {False: 512, True: 256}
# Small rows are packed several to a program so each program still moves a useful amount.
TILE_ELEMENTS = 4096
MAX_ROWS_PER_TILE = 32
# Column chunk of the looped path.
LOOP_BLOCK_N = 4096


@dataclass(frozen=True)
class Tile:
    block_m: int  # rows per program
    block_n: int  # columns per program (>= N when fused)
    fused: bool  # the tile spans whole rows: statistics are computed in-tile
    num_warps: int

    def row_tiles(self, m: int) -> int:
        return triton.cdiv(m, self.block_m)

    def col_tiles(self, n: int) -> int:
        return 1 if self.fused else triton.cdiv(n, self.block_n)


def _warps(elements: int, backward: bool) -> int:
    return max(1, min(32, elements // ELEMENTS_PER_WARP[backward]))


def tile_for(n: int, backward: bool) -> Tile:
    limit = FUSED_BWD_N if backward else FUSED_FWD_N
    block_n = triton.next_power_of_2(n)
    if block_n <= limit:
        block_m = max(1, min(MAX_ROWS_PER_TILE, TILE_ELEMENTS // block_n))
        return Tile(block_m, block_n, True, _warps(block_m * block_n, backward))
    return Tile(1, LOOP_BLOCK_N, False, _warps(LOOP_BLOCK_N, backward))


def stats_block(n: int, k: int | None = None) -> int:
    """Chunk width of the looped statistics kernels (which read k <= N columns of each row)."""
    return min(LOOP_BLOCK_N, triton.next_power_of_2(k or n))


def persistent_programs(device: torch.device, row_tiles: int, col_tiles: int, n: int) -> int:
    """How many row-programs the backward uses per column chunk.

    Each program accumulates dW over its rows in registers and writes one row of an fp32
    [programs, N] partial buffer, later summed in a fixed order: deterministic, no atomics.
    More programs fill the GPU; fewer keep the partial buffer (programs x N) small. Wide rows
    need fewer programs because each row already carries a lot of work.
    """
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        per_sm = 8 if n <= 1024 else 4 if n <= 8192 else 2
        target = max(1, sms * per_sm // col_tiles)
    else:  # the interpreter: a few programs still exercise the grid-stride loop
        target = 3
    return max(1, min(row_tiles, target))


def param_grad_partials(programs: int, x: torch.Tensor, present: bool) -> torch.Tensor | None:
    """The [programs, N] buffer one parameter's gradient partials go to (None: no parameter).
    Every program writes its whole row, so only an empty input needs the zeros."""
    if not present:
        return None
    alloc = torch.empty if x.shape[0] > 0 else torch.zeros
    return alloc((programs, x.shape[1]), dtype=compute_dtype(x), device=x.device)


def reduce_partials(partials: torch.Tensor | None) -> torch.Tensor | None:
    return None if partials is None else partials.sum(0)
