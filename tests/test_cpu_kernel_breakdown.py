"""scripts/cpu_kernel_breakdown.py: the three measurements it names (with the custom-op route), for the shape asked, and a
one-line error for a malformed shape. (Times are only checked to be there, never for speed.)"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from repro.kernels import cpu as cpu_kernels

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cpu_kernel_breakdown.py"


def run(*args: str) -> subprocess.CompletedProcess:
    # its own process: the script changes how glibc keeps freed memory
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not cpu_kernels.available(), reason="the C++ CPU kernels do not build here")
def test_it_times_the_kernels_alone_interleaved_and_the_fixed_cost():
    result = run("--shape", "64x32", "--threads", "1", "--rounds", "3")
    assert result.returncode == 0, result.stderr
    head, alone, mixed, fixed = result.stdout.splitlines()
    assert head.startswith("64 x 32, fp32, 1 thread(s), build ")
    number = r"\d+\.\d{3}"
    assert re.fullmatch(rf"  back to back   raw kernels {number}", alone)
    assert re.fullmatch(rf"  interleaved    raw kernels {number}  rms_norm op {number}  Python Function {number}  "
                        rf"custom op {number}  F.layer_norm {number}", mixed)
    assert re.fullmatch(rf"  fixed cost     rms_norm op {number}  Python Function {number}  custom op {number}  "
                        rf"F.layer_norm {number}  \(2 x 8 input\)", fixed)


def test_a_malformed_shape_is_a_one_line_error():
    result = run("--shape", "4096by512")
    assert result.returncode == 2 and "--shape must be MxN, e.g. 4096x512, got '4096by512'" in result.stderr
