"""The compile-time performance gate: the Triton kernels compiled for a Hopper GPU (sm_90)
without one, with the specialization the JIT really uses (register_report.py).

The interpreter proves the kernels' arithmetic; this proves what the binary will do with the
memory system: no register spills, at least two CTAs per SM for the main backward configs (so
one CTA's loads are in flight while the other reduces its rows), 128-bit global loads and stores,
and loops that prefetch (cp.async). The report runs in a subprocess because interpreted kernels
(TRITON_INTERPRET=1, set for the rest of the suite) cannot be compiled.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from repro.kernels.triton import _launch
from repro.kernels.triton.register_report import access_bits

KERNELS = {"rms_fwd", "rms_fwd_looped", "rms_bwd", "rms_bwd_stats",
           "ln_fwd", "ln_fwd_looped", "ln_bwd", "ln_bwd_stats"}
FIELDS = {"kernel", "channels", "n", "dtype", "regs", "spills", "ctas_per_sm", "pipelined", "vector_bits", "estimate_pct"}
GATED_BWD_N = (1024, 2048, 4096, 8192)
# LayerNorm's 8K backward keeps four fp32 row arrays live across its reductions (x-hat, dy, dW,
# dB: 64 registers a thread at 16 warps), so two CTAs cannot share an SM without spilling; it runs
# one CTA of 16 warps with two tiles in flight instead (64 KB per SM, as two CTAs of RMSNorm).
ONE_CTA_BY_DESIGN = {("ln_bwd", 8192)}


@pytest.fixture(scope="module")
def report():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "repro.kernels.triton.register_report", "--json"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0 and "ptxas" in proc.stderr and "No such file" in proc.stderr:
        pytest.skip("Triton's bundled ptxas is missing")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_report_covers_every_kernel_with_its_fields(report):
    assert {row["kernel"] for row in report} == KERNELS
    assert all(FIELDS <= row.keys() for row in report)
    assert {row["dtype"] for row in report} == {"bf16", "fp32"}
    # and the per-channel mode (ConvNorm's gain per row), whose launches compile their own variants
    assert {row["kernel"] for row in report if row["channels"] > 0} == KERNELS


def test_no_kernel_spills_registers(report):
    spilling = [row for row in report if row["spills"] > 0]
    assert not spilling, f"register spills: {spilling}"


def test_main_backward_configs_fit_two_ctas_per_sm(report):
    rows = [r for r in report if r["kernel"] in ("rms_bwd", "ln_bwd") and r["dtype"] == "bf16"
            and r["n"] in GATED_BWD_N and r["channels"] == 0]
    assert len(rows) == 2 * len(GATED_BWD_N)
    short = [r for r in rows if r["ctas_per_sm"] < 2 and (r["kernel"], r["n"]) not in ONE_CTA_BY_DESIGN]
    assert not short, f"fewer than 2 CTAs per SM: {short}"
    for kernel, n in ONE_CTA_BY_DESIGN:  # the exception still keeps two tiles in flight
        row = next(r for r in rows if (r["kernel"], r["n"]) == (kernel, n))
        assert row["ctas_per_sm"] * row["stages"] >= 2 and row["pipelined"], row


def test_global_access_stays_128_bit(report):
    narrow = [row for row in report if row["vector_bits"] < 128]  # every N reported is a multiple of 8
    assert not narrow, f"lost 128-bit access: {narrow}"


def test_every_loop_is_pipelined(report):
    serial = [row for row in report if row["has_loop"] and not row["pipelined"]]
    assert not serial, f"loops without cp.async prefetch: {serial}"


# ------------------------------------------------------------------------ the gate's own logic
def test_ctas_per_sm_follows_the_occupancy_rules():
    assert _launch.ctas_per_sm(64, 0, 16) == 2  # 64 x 512 threads = half the register file
    assert _launch.ctas_per_sm(65, 0, 16) == 1  # allocated in units of 8 registers: 72
    assert _launch.ctas_per_sm(32, 0, 8) == 8  # the thread limit (2048) binds
    assert _launch.ctas_per_sm(32, 100_000, 4) == 2  # shared memory binds (228 KB, 1 KB reserved)


def test_access_bits_reads_vector_width_from_ptx():
    ptx = """
        @%p1 ld.global.L1::evict_last.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
        st.global.b16 [ %rd2 + 0 ], { %rs1 };
        cp.async.cg.shared.global [ %r5 + 0 ], [ %rd3 + 0 ], 0x10, %r6;
    """
    assert access_bits(ptx) == (128, 16)
    assert access_bits("ld.global.v2.b32 {%r1, %r2}, [%rd1];\nst.global.v2.f32 [%rd2], {%f1, %f2};") == (64, 64)


def test_backward_register_cap_only_where_the_live_rows_fit():
    rms_8k = _launch.tile_for(8192, backward=True, param_grads=1)
    ln_8k = _launch.tile_for(8192, backward=True, param_grads=2)
    assert (rms_8k.num_warps, rms_8k.maxnreg) == (16, 64)
    assert ln_8k.maxnreg is None  # capping at 64 would spill
    assert _launch.tile_for(16384, backward=True, param_grads=1).fused  # RMSNorm's dW alone fits
    assert not _launch.tile_for(16384, backward=True, param_grads=2).fused
    assert not _launch.tile_for(16384, backward=True, itemsize=4, param_grads=1).fused
    assert all(4 <= _launch.tile_for(n, backward=True).num_warps <= 8 for n in (512, 1024, 2048, 4096))
