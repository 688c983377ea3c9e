"""scripts/conv_norm_affine.py: a table per dtype with every candidate and the fused / unfused
ratios, the same in its JSON, and one-line errors for bad arguments. (Times are only checked to
be there, never for speed.)"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from repro.kernels import cpu as cpu_kernels

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "conv_norm_affine.py"


def run(*args: str) -> subprocess.CompletedProcess:
    # its own process: the script changes how glibc keeps freed memory
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not cpu_kernels.available(), reason="the C++ CPU kernels do not build here")
def test_it_times_fused_unfused_and_torchs_kernels_per_map(tmp_path):
    out = tmp_path / "r.json"
    result = run("--width", "2", "--batch", "2", "--dtypes", "bfloat16", "--threads", "1", "--rounds", "3",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.match(r".+, 1 thread\(s\), kernels backend cpu, width 2, batch 2, 3 rounds$", lines[0])
    rows = [line for line in lines if re.match(r"\| \d+x\d+x\d+x\d+ \|", line)]
    assert [row.split(" | ")[0] for row in rows] == ["| 2x2x32x32", "| 2x4x16x16", "| 2x4x6x6"]
    ratio = r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]"
    assert all(re.search(rf"\| {ratio} \| {ratio} \| {ratio} \|$", row) for row in rows)
    saved = json.loads(out.read_text())
    assert saved["host"]["cpu_threads"] == 1 and "git_sha" in saved["host"] and "other_cpu" in saved["host"]
    (first, *_) = saved["dtypes"]["bfloat16"]
    assert set(first["median_ms"]) == {"layernorm fused", "layernorm unfused", "rmsnorm fused", "rmsnorm unfused",
                                       "prmsnorm fused", "prmsnorm unfused", "BatchNorm2d", "F.group_norm"}
    for r in first["fused_vs_unfused"].values():
        assert r["ci95"][0] <= r["ratio"] <= r["ci95"][1] and r["rounds"] == 3


@pytest.mark.parametrize("args, message", [
    (["--dtypes", "float16"], "--dtypes: unknown ['float16']; allowed: float32, bfloat16"),
    (["--rounds", "2"], "--rounds >= 3"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    result = run(*args)
    assert result.returncode == 2 and message in result.stderr
