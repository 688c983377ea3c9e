"""scripts/cpu_kernel_ab.py: it builds another revision of the kernels beside the working tree's,
times both in one process and compares their outputs; bad arguments are one-line errors. (Times are
only checked to be there, never for speed.)"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from repro.kernels import cpu as cpu_kernels

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "cpu_kernel_ab.py"


def script_module():
    spec = importlib.util.spec_from_file_location("cpu_kernel_ab", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str) -> subprocess.CompletedProcess:
    # its own process: the script changes how glibc keeps freed memory and loads a second build
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900)


def test_the_library_is_renamed_exactly_once():
    ab = script_module()
    source = "x\nTORCH_LIBRARY(repro_cpu_norms, m) {\n  m.def(...);\n}\n"
    assert ab.renamed_library(source, "repro_cpu_norms", "other") == source.replace("(repro_cpu_norms,", "(other,")
    with pytest.raises(ValueError, match="expected exactly one 'TORCH_LIBRARY\\(repro_cpu_norms, m\\)'.*found 0"):
        ab.renamed_library("no library here", "repro_cpu_norms", "other")
    with pytest.raises(ValueError, match="found 2"):
        ab.renamed_library(source + source, "repro_cpu_norms", "other")


def test_the_committed_source_renames():
    # the marker the script rewrites is the one norms.cpp registers its ops under
    ab = script_module()
    text = (REPO / ab.SOURCE).read_text()
    assert f"TORCH_LIBRARY({ab.BASE_LIBRARY}, m)" in ab.renamed_library(text, cpu_kernels.LIBRARY, ab.BASE_LIBRARY)


@pytest.mark.parametrize("args, message", [
    (["--shapes", "4096by512"], "--shapes must be MxN[,MxN...], e.g. 4096x512, got '4096by512'"),
    (["--shapes", "16x4"], "--shapes: M must be >= 1 and N >= 8 (pRMSNorm takes N/8), got '16x4'"),
    (["--kernels", "rms fwd,gelu"], "--kernels: unknown ['gelu']; allowed: rms fwd, rms bwd, prms fwd, prms bwd, ln fwd, ln bwd, "
                                    "rms fwd pc, rms bwd pc, ln fwd pc, ln bwd pc"),
    (["--kernels", "rms bwd pc", "--shapes", "64x64,48x64"],
     "--shapes: the per-channel kernels take M as a multiple of 32 channels, got 48x64"),
    (["--rounds", "2"], "--rounds must be >= 3, --threads >= 1 and --flush-mib >= 0"),
    (["--base-without-flag=-Ofast"], "--base-without-flag: -Ofast not among the build's flags: -O3 "),
])
def test_bad_arguments_are_one_line_errors(args, message):
    result = run(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.skipif(not cpu_kernels.available(), reason="the C++ CPU kernels do not build here")
@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_an_unknown_revision_is_a_one_line_error():
    result = run("--base", "no-such-revision-xyz", "--shapes", "16x64", "--rounds", "3")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"--base 'no-such-revision-xyz': cannot read {script_module().SOURCE} at that revision")


@pytest.mark.skipif(not cpu_kernels.available(), reason="the C++ CPU kernels do not build here")
@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout: no revision to compare against")
def test_it_times_both_builds_and_compares_their_outputs(tmp_path):
    out = tmp_path / "ab.json"
    # the base built without the flag that keeps gcc from fusing a*b + c on its own: a flag that
    # changes the backward's rounding, and nothing else
    result = run("--base", "HEAD", "--shapes", "16x64,5x24", "--kernels", "rms bwd,ln fwd", "--rounds", "3",
                 "--threads", "1", "--flush-mib", "1", "--base-without-flag=-ffp-contract=off", "--out", str(out))
    assert result.returncode == 0, result.stderr
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    data = json.loads(out.read_text())
    assert data["base_commit"] == head and data["rounds"] == 3 and data["host"]["cpu_model"]
    assert data["base_without_flags"] == ["-ffp-contract=off"] and "without -ffp-contract=off" in result.stdout
    assert [(r["shape"], r["kernel"]) for r in data["results"]] == [
        ("16x64", "rms bwd"), ("16x64", "ln fwd"), ("5x24", "rms bwd"), ("5x24", "ln fwd")]
    for row in data["results"]:
        assert row["base_ms"] > 0 and row["new_ms"] > 0
        assert row["ratio_ci95"][0] <= row["ratio"] <= row["ratio_ci95"][1]
        # HEAD's kernels against the working tree's: the tests run on a committed kernel source
        # unless a kernel change is under way, and then the outputs still agree to rounding
        assert row["max_abs_difference"] < 1e-4
    table = [line for line in result.stdout.splitlines() if line.startswith("| 16x64 |") or line.startswith("| 5x24 |")]
    assert len(table) == 4


@pytest.mark.skipif(not cpu_kernels.available(), reason="the C++ CPU kernels do not build here")
def test_the_per_channel_calls_are_convnorms_mode_and_only_where_the_rows_fit():
    """The per-channel kernels the script times compute ConvNorm's per-(sample, channel) norm with
    one gain and bias per channel: checked against the reference on the working tree's build."""
    import torch

    from repro.kernels import reference

    ab = script_module()
    lib = cpu_kernels.load()
    assert set(ab.kernel_calls(lib, 40, 16)) == set(ab.KERNELS)  # 40 rows: not whole groups of 32 channels
    calls = ab.kernel_calls(lib, 64, 16)
    assert set(calls) == set(ab.KERNELS) | set(ab.PER_CHANNEL_KERNELS)
    torch.manual_seed(0)  # kernel_calls' own inputs, drawn again in the same order
    x = torch.randn(64, 16)
    torch.randn(64, 16), torch.randn(16), torch.randn(16)  # dy, w, b
    wc, bc = 1 + 0.1 * torch.randn(32), 0.1 * torch.randn(32)
    maps = x.view(2, 32, 16)
    y_rms = calls["rms fwd pc"]()[0].view(2, 32, 16)
    y_ln = calls["ln fwd pc"]()[0].view(2, 32, 16)
    torch.testing.assert_close(y_rms, reference.rms_norm(maps, wc, bc, eps=1e-6, affine_dim=-2))
    torch.testing.assert_close(y_ln, reference.layer_norm(maps, wc, bc, eps=1e-5, affine_dim=-2))
    assert all(t.shape == (64, 16) for t in (calls["rms bwd pc"]()[0], calls["ln bwd pc"]()[0]))
