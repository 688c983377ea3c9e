"""Launch geometry shared by the norm kernels: tile shapes, warps, pipelining, the persistent grid.

Every kernel works on a 2D (rows, N) view whose last dim is contiguous. A row that fits one
register tile is normalized in one pass ("fused"). Longer rows take the looped path: the
forward makes two passes over each row in one program (statistics, then apply; the second pass
finds the row in L2), the backward gets per-row coefficients from a looped kernel, then a
column-tiled kernel writes dx.

The limits below are checked by the compile-time gate (register_report.py,
tests/test_triton_compile.py): no spills, >= 2 CTAs per SM for the main backward configs,
128-bit global access.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ..reference import compute_dtype

# Longest row held whole in registers. Forward: 32K bf16 columns at 32 warps use 63 registers
# and spill nothing (64K, and LayerNorm's 32K fp32 = 128 KB, spill): at most 64 KB of row.
# Backward: it keeps x, dy and the dW/dB accumulators live; 8K columns at 16 warps is the widest
# that spills nothing on Triton 3.6 and 3.8 (16K for RMSNorm's 16-bit rows without bias, below).
FUSED_FWD_N = 32768
FUSED_FWD_BYTES = 65536
FUSED_BWD_N = 8192
# Forward: elements per warp of a tile (small rows are packed several to a program).
FWD_ELEMENTS_PER_WARP = 512
FWD_TILE_ELEMENTS = 4096
MAX_ROWS_PER_TILE = 32
# Backward: a tile of BWD_TILE_ELEMENTS (x and dy in flight, BWD_STAGES deep through shared
# memory via cp.async), 4-8 warps, so that two or more CTAs fit on an SM.
BWD_TILE_ELEMENTS = 2048
BWD_ELEMENTS_PER_WARP = 512
BWD_STAGES = 2
# The backward is capped (ptxas .maxnreg) at the registers that let BWD_MIN_CTAS CTAs share an SM,
# where the arrays live across its row reductions (x, dy and one fp32 accumulator per parameter
# gradient, so many per thread) leave REG_OVERHEAD registers for addresses and indices; ptxas
# then fits RMSNorm's 8K row in 64 registers without spilling. LayerNorm's dW and dB do not
# leave room at 8K: uncapped it runs one CTA per SM, 2 tiles deep.
BWD_MIN_CTAS = 2
REG_OVERHEAD = 16
# Column chunk of the looped paths, and how many chunks are in flight at once.
LOOP_BLOCK_N = 4096
LOOP_STAGES = 3  # the looped forward runs ~1-2 CTAs per SM (rows in flight bounded by L2)


@dataclass(frozen=True)
class Tile:
    block_m: int  # rows per program (per loop iteration in the backward)
    block_n: int  # columns per program (>= N when fused)
    fused: bool  # the tile spans whole rows: statistics are computed in-tile
    num_warps: int
    num_stages: int = 1  # loop iterations in flight (the backward's persistent loop)
    maxnreg: int | None = None  # register cap per thread (None: the compiler's choice)

    def row_tiles(self, m: int) -> int:
        return triton.cdiv(m, self.block_m)

    def col_tiles(self, n: int) -> int:
        return 1 if self.fused else triton.cdiv(n, self.block_n)


def _warps(elements: int, per_warp: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, elements // per_warp))


def tile_for(n: int, backward: bool, itemsize: int = 2, param_grads: int = 1) -> Tile:
    """The tile for rows of n elements of itemsize bytes; a backward accumulates param_grads
    parameter gradients (dW, dB) per column."""
    block_n = triton.next_power_of_2(n)
    if not backward:
        if block_n <= FUSED_FWD_N and block_n * itemsize <= FUSED_FWD_BYTES:
            block_m = max(1, min(MAX_ROWS_PER_TILE, FWD_TILE_ELEMENTS // block_n))
            return Tile(block_m, block_n, True, _warps(block_m * block_n, FWD_ELEMENTS_PER_WARP, 1, 32))
        # 32-bit chunks are twice the bytes: two in flight suffice (a third spills on Triton 3.8)
        stages = LOOP_STAGES if itemsize <= 2 else 2
        return Tile(1, LOOP_BLOCK_N, False, _warps(LOOP_BLOCK_N, FWD_ELEMENTS_PER_WARP, 1, 32), stages)
    # With one parameter gradient (RMSNorm's dW) a 16-bit row of twice the limit still fits at
    # 16 warps without spilling (128 registers, one CTA per SM, two 64 KB tiles in flight): its 6
    # bytes per element beat the looped path's 10. LayerNorm's dW + dB spill there.
    limit = FUSED_BWD_N * (2 if param_grads <= 1 and itemsize <= 2 else 1)
    if block_n <= limit:
        block_m = max(1, min(MAX_ROWS_PER_TILE, BWD_TILE_ELEMENTS // block_n))
        # 8K+ columns need 16 warps to hold x, dy and the accumulators without spilling
        hi = 16 if block_n > 4096 else 8
        warps = _warps(block_m * block_n, BWD_ELEMENTS_PER_WARP, 4, hi)
        return Tile(block_m, block_n, True, warps, BWD_STAGES,
                    _register_cap(block_m * block_n, warps, 2 + param_grads, itemsize))
    warps = _warps(LOOP_BLOCK_N, BWD_ELEMENTS_PER_WARP, 4, 8)
    return Tile(1, LOOP_BLOCK_N, False, warps, BWD_STAGES,
                _register_cap(LOOP_BLOCK_N, warps, 2 + param_grads, itemsize))


def _register_cap(elements: int, warps: int, live_arrays: int, itemsize: int) -> int | None:
    """Registers per thread that let BWD_MIN_CTAS CTAs share an SM, or None where the live
    arrays do not fit in them, or the CTAs' pipelined x and dy tiles not in shared memory
    (capping would only spill)."""
    cap = min(255, SM90["regs"] // (BWD_MIN_CTAS * 32 * warps) // 8 * 8)
    per_thread = elements // (32 * warps)
    shared = BWD_STAGES * 2 * elements * itemsize + SHARED_RESERVED
    fits = live_arrays * per_thread + REG_OVERHEAD <= cap and BWD_MIN_CTAS * shared <= SM90["shared"]
    return cap if fits else None


def stats_block(n: int, k: int | None = None) -> int:
    """Chunk width of the looped kernels' statistics pass (which reads k <= N columns of a row)."""
    return min(LOOP_BLOCK_N, triton.next_power_of_2(k or n))


# ---------------------------------------------------------------------------- occupancy
# Hopper (sm_90) per-SM limits: the compile-time gate uses them without a GPU; on a GPU the
# device's own properties are used.
SM90 = dict(regs=65536, threads=2048, ctas=32, shared=233472)
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256 (8 per thread)
SHARED_RESERVED = 1024  # the driver reserves 1 KB of shared memory per CTA


def ctas_per_sm(regs: int, shared_bytes: int, num_warps: int, sm: dict = SM90) -> int:
    """How many CTAs of a kernel fit on one SM at once, from its registers per thread,
    shared memory per CTA and warps (the CUDA occupancy calculator's rules)."""
    regs_per_warp = triton.cdiv(max(regs, 1) * 32, REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (sm["regs"] // regs_per_warp) // num_warps
    by_threads = sm["threads"] // (32 * num_warps)
    by_shared = sm["shared"] // (shared_bytes + SHARED_RESERVED)
    return max(0, min(by_regs, by_threads, by_shared, sm["ctas"]))


_FITTING_CTAS: dict = {}


def fitting_ctas(kernel, args: tuple, kwargs: dict, device: torch.device) -> int:
    """CTAs per SM of `kernel` as compiled for these arguments, read from the compiled binary
    (cached per specialization). The interpreter has no binary: 1."""
    if device.type != "cuda":
        return 1
    key = (kernel, device.index, tuple(sorted(kwargs.items())),
           tuple(a.dtype if isinstance(a, torch.Tensor) else type(a) for a in args))
    if key not in _FITTING_CTAS:
        compiled = kernel.warmup(*args, grid=(1,), **kwargs)
        compiled._init_handles()
        props = torch.cuda.get_device_properties(device)
        sm = dict(regs=getattr(props, "regs_per_multiprocessor", SM90["regs"]),
                  threads=getattr(props, "max_threads_per_multi_processor", SM90["threads"]),
                  ctas=SM90["ctas"], shared=getattr(props, "shared_memory_per_multiprocessor", SM90["shared"]))
        _FITTING_CTAS[key] = max(1, ctas_per_sm(compiled.n_regs, compiled.metadata.shared, kwargs["num_warps"], sm))
    return _FITTING_CTAS[key]


def persistent_programs(device: torch.device, row_tiles: int, col_tiles: int, ctas: int) -> int:
    """How many row-programs the backward uses per column chunk: as many as fit on the GPU at
    once (ctas per SM x SMs), so every program stays resident and loops over its rows; never more
    than there are row tiles. Each program accumulates dW over its rows and writes one row of an
    fp32 [programs, N] partial buffer, later summed in a fixed order: deterministic, no atomics."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = max(1, sms * ctas // col_tiles)
    else:  # the interpreter: a few programs still exercise the grid-stride loop
        target = 3
    return max(1, min(row_tiles, target))


def looped_row_programs(device: torch.device, m: int, row_bytes: int) -> int:
    """Programs of the looped forward. Each takes rows in turn, and its second pass over a row
    should find it in L2: so no more rows are in flight than half of L2 holds (but at least one
    per SM). 64K bf16 columns: ~195 rows at once on an H100/H200 (50 MB L2), not the ~800 that
    one program per row would keep resident (100 MB)."""
    if device.type != "cuda":  # the interpreter: a few programs still exercise the row loop
        return max(1, min(m, 3))
    props = torch.cuda.get_device_properties(device)
    in_l2 = props.L2_cache_size // 2 // max(row_bytes, 1)
    return max(1, min(m, max(props.multi_processor_count, in_l2)))


def check_channels(channels: int, m: int) -> None:
    """channels > 0 (per-row parameters, row r taking element r % channels) needs the rows in
    whole groups of `channels`: the (sample, channel) rows of a conv map."""
    if channels < 0 or (channels > 0 and m % channels):
        raise ValueError(f"channels must be 0 or divide the row count ({m}), got {channels}")


def param_grad_partials(x: torch.Tensor, present: bool, programs: int, col_tiles: int,
                        channels: int) -> torch.Tensor | None:
    """The buffer one parameter's gradient partials go to (None: no parameter): per-column
    parameters, one row of N column sums per program ([programs, N]); per-row ones (channels > 0),
    each row's sum per column tile ([col_tiles, M]). Every entry is written, so only an empty
    input needs the zeros."""
    if not present:
        return None
    m, n = x.shape
    alloc = torch.empty if m > 0 else torch.zeros
    return alloc((col_tiles, m) if channels else (programs, n), dtype=compute_dtype(x), device=x.device)


def placeholder_partials(x: torch.Tensor, present: bool) -> torch.Tensor | None:
    """A stand-in for a partial buffer with its dtype, to compile a kernel before its grid is known."""
    return torch.empty(1, dtype=compute_dtype(x), device=x.device) if present else None


def reduce_partials(partials: torch.Tensor | None, channels: int) -> torch.Tensor | None:
    """dW / dB from param_grad_partials' buffer, summed in a fixed order (deterministic): over
    programs, or over column tiles and then over the samples of each channel."""
    if partials is None:
        return None
    grad = partials.sum(0)
    return grad.view(-1, channels).sum(0) if channels else grad


def empty_param_grad(x: torch.Tensor, present: bool, channels: int) -> torch.Tensor | None:
    """dW / dB of an input with no rows: zeros (None: no parameter)."""
    return torch.zeros(channels or x.shape[1], dtype=compute_dtype(x), device=x.device) if present else None
