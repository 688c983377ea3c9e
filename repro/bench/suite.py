"""The benchmark grid, the bytes each case must move, and the loop that times every case.

Every (op, shape, dtype, backend, pass) becomes one record with a status: "ok" (timed),
"n/a" (the backend has no such op), "failed" (it raised: OOM, an unsupported size; the reason
is kept and the run goes on) or "skipped" (the time budget ran out, or the run was interrupted,
before the case).
"""
from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from tqdm import tqdm

from repro.kernels import reference

from .backends import Backend, Op, first_line
from .timing import DeviceInfo, Timer, Timing, pool_size

PASSES = ("fwd", "bwd", "fwdbwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Shape:
    M: int        # rows
    N: int        # features normalized over
    dtype: str    # key of DTYPES

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


# ---------------------------------------------------------------------------- grids
# GPU: 32K rows up to N = 32K (the performance targets' grid); past that a constant 2^28
# elements per tensor (512 MiB in bf16), so N = 256K fits beside the eager reference's fp32
# temporaries. fp16 / fp32 only at a few shapes. The CPU grid is ~64x smaller.
GPU_MAIN_N = (512, 1024, 2048, 4096, 8192, 16384, 32768)
GPU_LARGE_N = (65536, 131072, 262144)
# The order the bf16 widths are timed in: spread out, so a run its time budget stops early
# (the device check's) still spans the whole range instead of only the small rows.
GPU_N_ORDER = (4096, 65536, 1024, 16384, 262144, 512, 2048, 8192, 32768, 131072)
GPU_SIDE_SHAPES = ((32768, 1024), (32768, 8192), (4096, 65536))
GPU_QUICK_SHAPES = ((8192, 1024), (8192, 8192), (1024, 65536))
CPU_SHAPES = ((4096, 256), (4096, 1024), (4096, 4096), (1024, 16384), (256, 65536), (64, 262144))
CPU_QUICK_SHAPES = ((1024, 512), (1024, 4096))
DEFAULT_M = {("cuda", False): 32768, ("cuda", True): 8192, ("cpu", False): 4096, ("cpu", True): 1024}
DEFAULT_DTYPE = {"cuda": "bf16", "cpu": "fp32"}
# Rows up to this long are timed as a CUDA graph of many calls: at M = 32K a bf16 forward of
# N = 4096 moves 512 MB in ~0.13 ms on an H100/H200, no more than the host takes to launch a
# custom-op forward and backward (~0.1-0.3 ms), so per-call timing would time Python.
GRAPH_MAX_N = 4096


def parse_mxn(text: str) -> tuple[int, int]:
    """'4096x512' -> (4096, 512), as the CPU kernel scripts take their --shape(s); ValueError otherwise."""
    m, n = (int(v) for v in text.lower().split("x"))  # ValueError on anything but two integers
    return m, n


def default_grid(device_type: str, quick: bool, dtypes: Optional[Iterable[str]] = None) -> list[Shape]:
    """The built-in grid, most important shapes first (a time budget cuts from the end).

    On a GPU, --dtypes filters the grid (fp16/fp32 have their own few shapes); on a CPU every
    requested dtype gets the CPU shapes.
    """
    if device_type == "cpu":
        shapes = CPU_QUICK_SHAPES if quick else CPU_SHAPES
        return [Shape(m, n, d) for d in (dtypes or [DEFAULT_DTYPE["cpu"]]) for m, n in shapes]
    if quick:
        grid = [Shape(m, n, "bf16") for m, n in GPU_QUICK_SHAPES]
    else:
        grid = [Shape(32768 if n in GPU_MAIN_N else 2**28 // n, n, "bf16") for n in GPU_N_ORDER]
        grid += [Shape(m, n, d) for d in ("fp16", "fp32") for m, n in GPU_SIDE_SHAPES]
    return [s for s in grid if dtypes is None or s.dtype in dtypes]


def custom_grid(device_type: str, quick: bool, ms, ns, dtypes) -> list[Shape]:
    """--M / --N given: their product (a missing one takes the default grid's rows or widths)."""
    ms = ms or [DEFAULT_M[(device_type, quick)]]
    ns = ns or sorted({s.N for s in default_grid(device_type, quick)})
    dtypes = dtypes or [DEFAULT_DTYPE[device_type]]
    return [Shape(m, n, d) for d in dtypes for n in ns for m in ms]


# ---------------------------------------------------------------------------- bytes
def bytes_moved(op: Op, pass_: str, M: int, N: int, itemsize: int) -> int:
    """Bytes that must cross memory, each input read once and each output written once
    (parameters in the input's dtype, as the benchmark makes them).

    fwd: x read, y written, weight (and LayerNorm's bias) read. bwd: dy and x read, dx written,
    weight read, dweight (and dbias) written, the saved fp32 row statistics read. fwd+bwd: the
    sum. pRMSNorm moves what RMSNorm moves: the whole row is still read to write the output.
    """
    act = M * N * itemsize
    params = (2 if op.has_bias else 1) * N * itemsize
    fwd = 2 * act + params
    bwd = 3 * act + N * itemsize + params + op.num_stats * M * 4
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[pass_]


# ---------------------------------------------------------------------------- inputs
class InputPool:
    """Input sets for one shape, rotated through so that the timed calls together touch more
    memory than the cache holds (x and dy per entry; weight and bias are shared and small)."""

    def __init__(self, shape: Shape, info: DeviceInfo, seed: int = 0):
        dev, dt = info.device, shape.torch_dtype
        gen = torch.Generator(device=dev).manual_seed(seed)
        size = pool_size(info.cache_bytes, 2 * shape.M * shape.N * dt.itemsize)
        base_x = torch.randn(shape.M, shape.N, device=dev, dtype=dt, generator=gen)
        base_dy = torch.randn(shape.M, shape.N, device=dev, dtype=dt, generator=gen)
        # copies, not fresh random draws: same values, but distinct memory, and cheap to make
        self.xs = [base_x.clone().requires_grad_() for _ in range(size)]
        self.dys = [base_dy.clone() for _ in range(size)]
        self.weight = (1 + 0.1 * torch.randn(shape.N, device=dev, generator=gen)).to(dt).requires_grad_()
        self.bias = (0.1 * torch.randn(shape.N, device=dev, generator=gen)).to(dt).requires_grad_()

    def __len__(self) -> int:
        return len(self.xs)


def _pass_fn(pass_: str, fn, op: Op, pool: InputPool):
    """The callable to time for one pass; each call uses the next input set of the pool."""
    bias = pool.bias if op.has_bias else None
    params = [pool.weight] + ([bias] if bias is not None else [])
    turn = itertools.cycle(range(len(pool)))
    if pass_ == "fwd":
        # training forward: autograd records the graph, as it does in a training step
        return lambda: fn(pool.xs[next(turn)], pool.weight, bias)
    if pass_ == "fwdbwd":
        def fwdbwd():
            i = next(turn)
            y = fn(pool.xs[i], pool.weight, bias)
            return torch.autograd.grad(y, [pool.xs[i], *params], pool.dys[i])
        return fwdbwd
    # bwd: one retained graph per input set; autograd.grad returns fresh gradients instead of
    # accumulating into .grad, which would add a read-modify-write of dx to every timed call
    ys = [fn(x, pool.weight, bias) for x in pool.xs]

    def bwd():
        i = next(turn)
        return torch.autograd.grad(ys[i], [pool.xs[i], *params], pool.dys[i], retain_graph=True)
    return bwd


# ---------------------------------------------------------------------------- the loop
def run_grid(
    ops: list[Op], shapes: list[Shape], backends: list[Backend], passes: Iterable[str],
    info: DeviceInfo, timer: Timer, copy_gbps: Optional[float],
    budget_s: Optional[float] = None, progress: Optional[bool] = None, start: Optional[float] = None,
) -> list[dict]:
    """Time every case; returns one record per (shape, op, backend, pass), in grid order.

    No case starts once `budget_s` seconds have passed since `start` (a time.perf_counter()
    reading; default: now).
    """
    passes = list(passes)
    records = []
    start = time.perf_counter() if start is None else start
    stop = None  # why the remaining cases are skipped: the budget ran out, or Ctrl-C / SIGINT
    bar = tqdm(total=len(shapes) * len(ops) * len(backends), desc="repro-bench", unit="case",
               disable=None if progress is None else not progress)
    for i, shape in enumerate(shapes, 1):
        if bar.disable and progress is None:
            # no terminal (a log file on a device machine): one line per shape shows how far it got
            print(f"repro-bench: shape {i}/{len(shapes)}: {shape.M}x{shape.N} {shape.dtype} "
                  f"at {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        pool = None
        for op in ops:
            if stop is None and budget_s is not None and time.perf_counter() - start > budget_s:
                stop = f"time budget of {budget_s:g} s spent"
            for backend in backends:
                bar.set_postfix_str(f"{op.label} {shape.M}x{shape.N} {shape.dtype} {backend.name}", refresh=False)
                base = {"op": op.family, "partial": op.partial, "label": op.label, "M": shape.M,
                        "N": shape.N, "dtype": shape.dtype, "backend": backend.name}
                outcome = None
                if stop is None:
                    try:
                        if pool is None and _runnable(op, shape):
                            pool = _make_pool(shape, info)
                        outcome = _run_case(op, shape, backend, passes, pool, timer, info.device)
                    except KeyboardInterrupt:
                        stop = "interrupted"  # e.g. `timeout -s INT`: the run still writes what it measured
                if outcome is None:
                    outcome = _same_for_all(passes, "skipped", stop)
                for pass_, status, reason, timing in outcome:
                    records.append(_record(base, op, shape, pass_, status, reason, timing,
                                           len(pool) if isinstance(pool, InputPool) else None, copy_gbps))
                bar.update()
        del pool
        _free(info.device)
    bar.close()
    return records


def _runnable(op: Op, shape: Shape) -> bool:
    return reference.partial_size(shape.N, op.partial) >= 1


def _make_pool(shape: Shape, info: DeviceInfo):
    """The input pool, or the reason it could not be made (reported on every case of the shape)."""
    try:
        return InputPool(shape, info)
    except Exception as err:  # noqa: BLE001 - e.g. the shape does not fit in memory
        _free(info.device)
        return f"inputs: {type(err).__name__}: {first_line(err)}"


def _same_for_all(passes, status, reason):
    return [(p, status, reason, None) for p in passes]


def _run_case(op: Op, shape: Shape, backend: Backend, passes, pool, timer: Timer, device: torch.device):
    if not _runnable(op, shape):
        k = reference.partial_size(shape.N, op.partial)
        return _same_for_all(passes, "n/a", f"partial={op.partial:g} keeps k={k} < 1 features of N={shape.N}")
    if isinstance(pool, str):
        return _same_for_all(passes, "failed", pool)
    try:
        fn = backend.build(op)
    except Exception as err:  # noqa: BLE001
        return _same_for_all(passes, "failed", f"{type(err).__name__}: {first_line(err)}")
    if fn is None:
        return _same_for_all(passes, "n/a", f"{backend.name} has no {op.label.split()[0]} op")
    outcome = []
    for pass_ in passes:
        try:
            timing = timer(_pass_fn(pass_, fn, op, pool), graph=shape.N <= GRAPH_MAX_N)
            outcome.append((pass_, "ok", None, timing))
        except Exception as err:  # noqa: BLE001 - a backend failing on a shape is a result, not a crash
            outcome.append((pass_, "failed", f"{type(err).__name__}: {first_line(err)}", None))
        _free(device)
    return outcome


def _record(base, op, shape, pass_, status, reason, timing: Optional[Timing], pool_len, copy_gbps) -> dict:
    nbytes = bytes_moved(op, pass_, shape.M, shape.N, shape.torch_dtype.itemsize)
    gbps = nbytes / timing.median_s / 1e9 if timing else None
    return {
        **base, "pass": pass_, "status": status, "reason": reason,
        "ms": timing.median_s * 1e3 if timing else None,
        "ms_p20": timing.p20_s * 1e3 if timing else None,
        "ms_p80": timing.p80_s * 1e3 if timing else None,
        "gbps": gbps, "pct_copy": 100 * gbps / copy_gbps if gbps and copy_gbps else None,
        "bytes": nbytes, "pool": pool_len, "reps": timing.reps if timing else None,
        "timing": timing.method if timing else None,
    }


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except RuntimeError:
            pass  # a sticky CUDA error; the next case will report it as its failure
