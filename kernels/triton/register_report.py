"""Compile every norm kernel for a Hopper GPU (sm_90) -- no GPU needed -- and report registers
and spills for the tile shapes the launcher picks around its limits.

    python -m repro.kernels.triton.register_report [--json]

The limits in _launch.py come from this report; tests/test_triton_compile.py asserts it shows no
spills. Triton ships ptxas, which reports the register use. Must run without TRITON_INTERPRET
(interpreted kernels cannot be compiled).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget

from . import _launch, layernorm, rmsnorm

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
TARGET = GPUTarget("cuda", 90, 32)
# A pointer's element type per argument name; "X" stands for the input dtype.
POINTERS = {name: "X" for name in ("X", "Y", "DY", "DX")}
POINTERS.update({name: "fp32" for name in ("W", "B", "R", "MEAN", "C", "DW", "DB")})
INTS = {"stride_x", "stride_y", "stride_dy", "stride_dx", "M", "N", "k"}


def compile_sm90(fn, dtype: str, constexprs: dict, num_warps: int) -> tuple[int, int]:
    """(registers per thread, spill-store bytes) of fn compiled for sm_90."""
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in POINTERS:
            signature[name] = "*" + (dtype if POINTERS[name] == "X" else POINTERS[name])
        else:
            signature[name] = "i32" if name in INTS else "fp32"
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=TARGET, options={"num_warps": num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        out = subprocess.run(
            [PTXAS, "-arch=sm_90a", "-v", ptx, "-o", os.devnull], capture_output=True, text=True, check=True
        ).stderr
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", out).group(1))
    return regs, spills


def kernels_for(op: str, n: int, backward: bool):
    """The kernels one launch runs for a row of n, each with its constexprs and warps."""
    module = rmsnorm if op == "rms" else layernorm
    name = f"_{op}_{'bwd' if backward else 'fwd'}"
    tile = _launch.tile_for(n, backward=backward)
    mode = {"EPS_OUTSIDE": True} if op == "rms" else {}
    apply = dict(HAS_W=True, HAS_B=True, FUSED=tile.fused, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, **mode)
    if backward and tile.fused:
        apply["C"] = None  # the looped path's per-row coefficients are not passed
    yield getattr(module, name), apply, tile.num_warps
    if not tile.fused:
        stats = dict(BLOCK_N=_launch.stats_block(n), **mode)
        if backward:
            stats["HAS_W"] = True
        yield getattr(module, name + "_stats"), stats, tile.num_warps


def report():
    """Rows for the widest fused row, the narrowest looped row and a small packed row."""
    shapes = [(n, False) for n in (512, _launch.FUSED_FWD_N, _launch.FUSED_FWD_N + 1)]
    shapes += [(n, True) for n in (512, _launch.FUSED_BWD_N, _launch.FUSED_BWD_N + 1)]
    for op in ("rms", "ln"):
        for n, backward in shapes:
            for dtype in ("bf16", "fp32"):
                for fn, constexprs, warps in kernels_for(op, n, backward):
                    regs, spills = compile_sm90(fn, dtype, constexprs, warps)
                    yield dict(kernel=fn.__name__, n=n, dtype=dtype, warps=warps, regs=regs, spills=spills)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    for row in report():
        print(json.dumps(row) if args.json else "{kernel:16s} N={n:<6d} {dtype:5s} warps={warps:<2d} regs={regs:<4d} spills={spills}".format(**row), flush=True)


if __name__ == "__main__":
    main()
