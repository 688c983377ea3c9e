"""The compile-time performance gate: every norm kernel compiled for a Hopper GPU (sm_90), with
the specialization the JIT really uses, and what the binary says about its speed. No GPU needed.

    python -m repro.kernels.triton.register_report [--json]

The launchers (rms_norm_forward, ...) are called on meta tensors shaped like the benchmark's
inputs (M = 32768 rows, weight in the input's dtype, RMSNorm without bias, eps inside,
LayerNorm with bias, per-feature parameters: channels = 0); their kernel launches are captured
instead of run, then bound by Triton's own JIT binder (integer and pointer divisibility by 16, None arguments as constexprs, dtypes)
and compiled. One record per kernel launched:

    kernel, pass, n, dtype, warps, stages, maxnreg (the register cap asked of ptxas), regs, spills (bytes), shared (bytes), ctas_per_sm,
    pipelined (cp.async in the PTX: loop iterations prefetched), vector_bits (widest global
    load/store of x, y, dx: 128 wherever N is a multiple of 8), estimate_pct.

estimate_pct is a model, not a measurement: % of copy bandwidth =
min(1, bytes in flight per SM / IN_FLIGHT_NEEDED) x (minimum bytes / bytes the path moves).
Bytes in flight per SM are ctas_per_sm x the bytes a CTA loads at once: its tile, times the
stages of a pipelined loop; an unpipelined loop counts half a tile (its loads wait while the
iteration's row reductions and stores run). IN_FLIGHT_NEEDED follows Little's law for an H100 /
H200 (~25-35 GB/s of memory bandwidth per SM x ~1 us of loaded latency).

tests/test_triton_compile.py fails on any spill, on fewer than 2 CTAs per SM for the main
backward configs, on lost 128-bit access and on an unpipelined loop. Must run without
TRITON_INTERPRET (interpreted kernels cannot be compiled).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from . import _launch, layernorm, rmsnorm

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
TARGET = GPUTarget("cuda", 90, 32)
M = 32768
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
IN_FLIGHT_NEEDED = 32 * 1024
# (op, pass) -> the N of the configs reported; bf16 everywhere, fp32 at the widest fused rows.
MAIN_N = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144)
FP32_N = {"fwd": (_launch.FUSED_FWD_N,), "bwd": (_launch.FUSED_BWD_N,)}
# The per-channel mode (PER_ROW: one gain and offset per row, ConvNorm's conv maps), bf16 with a
# bias, C = 64: rows of conv-map sizes, one past the fused backward's limit and one looped forward.
PER_CHANNEL_N = (256, 1024, 16384, 65536)
PER_CHANNEL_C = 64
# The main backward configs the gate holds to >= 2 CTAs per SM.
GATED_BWD_N = (1024, 2048, 4096, 8192)


# ---------------------------------------------------------------------------- capture
@contextmanager
def captured_launches():
    """Every @triton.jit launch of the norm modules is recorded as (kernel, args, kwargs)."""
    calls = []
    kernels = {id(obj): obj for mod in (rmsnorm, layernorm) for obj in vars(mod).values()
               if isinstance(obj, JITFunction)}.values()

    def recorder(kernel):
        def run(*args, grid, warmup, **kwargs):
            calls.append((kernel, args, kwargs))
        return run

    for kernel in kernels:
        kernel.run = recorder(kernel)
    try:
        yield calls
    finally:
        for kernel in kernels:
            del kernel.run


def launches(op: str, pass_: str, n: int, dtype: str, m: int = M, channels: int = 0):
    """The kernel launches the real launcher makes for one config (on meta tensors). channels > 0:
    the per-channel mode, with a bias for RMSNorm too."""
    dt = DTYPES[dtype]
    meta = dict(device="meta")
    x = torch.empty(m, n, dtype=dt, **meta)
    dy = torch.empty_like(x)
    w = torch.empty(channels or n, dtype=dt, **meta)
    b = torch.empty(channels or n, dtype=dt, **meta)
    stat = torch.empty(m, dtype=torch.float32, **meta)
    rms_bias = b if channels else None
    with captured_launches() as calls:
        if op == "rms" and pass_ == "fwd":
            rmsnorm.rms_norm_forward(x, w, rms_bias, 1e-6, n, False, channels)
        elif op == "rms":
            rmsnorm.rms_norm_backward(dy, x, w, stat, 1e-6, n, False, rms_bias is not None, channels)
        elif pass_ == "fwd":
            layernorm.layer_norm_forward(x, w, b, 1e-5, channels)
        else:
            layernorm.layer_norm_backward(dy, x, w, stat, stat, True, channels)
    return calls


# ---------------------------------------------------------------------------- compile
def compile_sm90(kernel, args, kwargs):
    """The kernel compiled for sm_90 exactly as the JIT would specialize these arguments."""
    backend = make_backend(TARGET)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=TARGET, options=options.__dict__)


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers per thread, spill-store bytes) that ptxas reports for sm_90a."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([PTXAS, "-arch=sm_90a", "-v", path, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", out).group(1))
    return regs, spills


_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)*)")
_CP_ASYNC = re.compile(r"cp\.async\.c[ag]\.shared\.global[^;]*?,\s*(0x[0-9a-fA-F]+|\d+)\s*[,;]")


def access_bits(ptx: str) -> tuple[int, int]:
    """(widest global load, widest global store) in bits; cp.async copies count as loads."""
    widest = {"ld": 0, "st": 0}
    for kind, suffix in _ACCESS.findall(ptx):
        parts = suffix.split(".")
        vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
        bits = next((int(p[1:]) for p in parts if re.fullmatch(r"[bfsu]\d+", p)), 0)
        widest[kind] = max(widest[kind], vec * bits)
    for size in _CP_ASYNC.findall(ptx):
        widest["ld"] = max(widest["ld"], 8 * int(size, 0))
    return widest["ld"], widest["st"]


# ---------------------------------------------------------------------------- model
def traffic_ratio(pass_: str, fused: bool) -> float:
    """Minimum bytes / bytes moved. The looped forward rereads each row, but from L2 (the rows in
    flight, a few MB, fit in it); the looped backward reads x and dy twice from memory (10 bytes
    per bf16 element against 6)."""
    return 1.0 if fused or pass_ == "fwd" else 0.6


def record(op, pass_, n, dtype, kernel, args, kwargs, channels: int = 0) -> dict:
    compiled = compile_sm90(kernel, args, kwargs)
    ptx = compiled.asm["ptx"]
    regs, spills = ptxas_usage(ptx)
    warps = kwargs["num_warps"]
    shared = compiled.metadata.shared
    ctas = _launch.ctas_per_sm(regs, shared, warps)
    load_bits, store_bits = access_bits(ptx)
    name = kernel.__name__.lstrip("_")
    stats_only = name.endswith("_stats")  # writes one number per row: only its loads are wide
    pipelined = "cp.async" in ptx
    block = kwargs.get("BLOCK_M", 1) * kwargs["BLOCK_N"]
    itemsize = DTYPES[dtype].itemsize
    tensors = 2 if pass_ == "bwd" else 1  # x and dy, or x
    has_loop = pass_ == "bwd" or "STAGES" in kwargs
    stages = kwargs.get("STAGES", 1)
    tile_bytes = tensors * block * itemsize * (stages if pipelined else 0.5 if has_loop else 1)
    fused = kwargs.get("FUSED", "looped" not in name) and not stats_only
    estimate = 100 * min(1.0, ctas * tile_bytes / IN_FLIGHT_NEEDED) * traffic_ratio(pass_, fused)
    return dict(
        kernel=name, channels=channels, op=op, **{"pass": pass_}, n=n, dtype=dtype, warps=warps, stages=stages,
        maxnreg=kwargs.get("maxnreg"),
        block_m=kwargs.get("BLOCK_M", 1), block_n=kwargs["BLOCK_N"], regs=regs, spills=spills,
        shared=shared, ctas_per_sm=ctas, has_loop=has_loop, pipelined=pipelined,
        vector_bits=load_bits if stats_only else min(load_bits, store_bits),
        estimate_pct=round(estimate),
    )


def configs():
    """(op, pass, n, dtype, channels): per-feature parameters (channels 0), then the per-channel mode."""
    for pass_ in ("fwd", "bwd"):
        for op in ("rms", "ln"):
            for n in MAIN_N:
                yield op, pass_, n, "bf16", 0
            for n in FP32_N[pass_]:
                yield op, pass_, n, "fp32", 0
            for n in PER_CHANNEL_N:
                yield op, pass_, n, "bf16", PER_CHANNEL_C


def report():
    seen = set()
    for op, pass_, n, dtype, channels in configs():
        for kernel, args, kwargs in launches(op, pass_, n, dtype, channels=channels):
            rec = record(op, pass_, n, dtype, kernel, args, kwargs, channels)
            key = (rec["kernel"], n, dtype, channels)
            if key not in seen:
                seen.add(key)
                yield rec


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="a JSON list, one record per kernel and config")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    rows = []
    for row in report():
        rows.append(row)
        if not args.json:
            print("{kernel:16s} N={n:<6d} {dtype:4s} C={channels:<3d} warps={warps:<2d} stages={stages} regs={regs:<3d} "
                  "spills={spills:<4d} shared={shared:<6d} ctas/SM={ctas_per_sm:<2d} pipelined={pipelined!s:5s} "
                  "vector={vector_bits:<3d} estimate={estimate_pct}%".format(**row), flush=True)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
