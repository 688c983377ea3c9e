"""repro-bench: the command runs, writes well-formed outputs, counts bytes right, and rejects
bad arguments clearly. No test asserts a speed: times on a shared CPU mean nothing here."""
from __future__ import annotations

import csv
import json
import platform

import pytest
import torch

from repro.bench import BACKEND_REGISTRY, Op, Shape, bytes_moved, default_grid, render_table
from repro.bench import timing
from repro.bench.backends import Backend
from repro.bench.report import RECORD_FIELDS
from repro.bench.suite import GPU_LARGE_N, GPU_MAIN_N, run_grid
from repro.bench.timing import QUICK_PLAN, describe_device, make_timer, pool_size, slugify
from repro.cli.bench import main

CPU = torch.device("cpu")


@pytest.fixture
def small_cache(monkeypatch):
    """Pretend the CPU has a 1 MiB cache, so the input pools and the copy buffer stay small."""
    monkeypatch.setattr(timing, "cpu_cache_bytes", lambda: 2**20)


# ---------------------------------------------------------------------------- byte model
@pytest.mark.parametrize("family,partial", [("rms_norm", 1.0), ("prms_norm", 0.125)])
def test_bytes_rmsnorm_fp32(family, partial):
    op = Op(family, partial)
    act = 4 * 8 * 4  # M=4 rows of N=8 fp32
    assert bytes_moved(op, "fwd", 4, 8, 4) == 2 * act + 8 * 4             # x, y, weight
    assert bytes_moved(op, "bwd", 4, 8, 4) == 3 * act + 2 * 8 * 4 + 4 * 4  # dy, x, dx, w, dw, rstd
    assert bytes_moved(op, "fwdbwd", 4, 8, 4) == 5 * act + 3 * 8 * 4 + 4 * 4


def test_bytes_layernorm_bf16_counts_bias_and_two_stats():
    op = Op("layer_norm")
    act = 1024 * 4096 * 2
    assert bytes_moved(op, "fwd", 1024, 4096, 2) == 2 * act + 2 * 4096 * 2        # + weight, bias
    assert bytes_moved(op, "bwd", 1024, 4096, 2) == 3 * act + 3 * 4096 * 2 + 2 * 1024 * 4


# ---------------------------------------------------------------------------- helpers
def test_slugify_device_names():
    assert slugify("Intel(R) Xeon(R) Processor") == "intel-xeon-processor"
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slugify("  ") == "unknown-device"


def test_pool_spans_twice_the_cache():
    assert pool_size(100, 30) == 7
    assert pool_size(100, 10**9) == 1
    assert pool_size(10**9, 1) == 512


def test_cpu_timer_reports_quantiles_in_order():
    t = make_timer(CPU, QUICK_PLAN)(lambda: sum(range(1000)))
    assert t.reps >= QUICK_PLAN.cpu_min_reps
    assert 0 < t.p20_s <= t.median_s <= t.p80_s


def test_default_grids():
    gpu = default_grid("cuda", quick=False)
    bf16 = [s for s in gpu if s.dtype == "bf16"]
    assert gpu[:len(bf16)] == bf16                                     # the targets' dtype first
    assert sorted(s.N for s in bf16) == sorted(GPU_MAIN_N + GPU_LARGE_N)
    assert all(s.M == 32768 for s in bf16 if s.N in GPU_MAIN_N)
    assert all(s.M * s.N == 2**28 for s in bf16 if s.N in GPU_LARGE_N)
    assert {s.dtype for s in gpu} == {"bf16", "fp16", "fp32"}
    assert {s.dtype for s in default_grid("cuda", quick=False, dtypes=["fp32"])} == {"fp32"}
    cpu = default_grid("cpu", quick=True)
    assert {s.dtype for s in cpu} == {"fp32"} and max(s.M * s.N for s in cpu) <= 2**22


# ---------------------------------------------------------------------------- the loop
def _fake_backend(name, fn):
    return Backend(name, "test double", ("cpu",), lambda op: fn)


def test_a_failing_backend_is_recorded_and_the_run_goes_on(small_cache):
    def broken(x, w, b):
        raise RuntimeError("out of memory (pretend)\nsecond line")

    good = _fake_backend("good", lambda x, w, b: x * w)
    bad = _fake_backend("bad", broken)
    records = run_grid([Op("rms_norm"), Op("prms_norm", 0.0625)], [Shape(4, 8, "fp32")], [good, bad],
                       ["fwd", "fwdbwd"], describe_device(CPU), make_timer(CPU, QUICK_PLAN), 10.0)
    assert len(records) == 2 * 2 * 2
    status = {(r["label"], r["backend"], r["pass"]): (r["status"], r["reason"]) for r in records}
    assert status[("RMSNorm", "good", "fwdbwd")] == ("ok", None)
    assert status[("RMSNorm", "bad", "fwd")] == ("failed", "RuntimeError: out of memory (pretend)")
    # k = floor(0.0625 * 8) = 0 features: not a failure of the backend, a case that does not exist
    assert status[("pRMSNorm p=0.0625", "good", "fwd")][0] == "n/a"
    ok = [r for r in records if r["status"] == "ok"]
    assert all(r["ms"] > 0 and r["gbps"] > 0 and r["pct_copy"] > 0 and r["pool"] >= 1 for r in ok)


def test_budget_skips_the_remaining_cases(small_cache):
    good = _fake_backend("good", lambda x, w, b: x * w)
    records = run_grid([Op("rms_norm")], [Shape(4, 8, "fp32")], [good], ["fwd"], describe_device(CPU),
                       make_timer(CPU, QUICK_PLAN), None, budget_s=1e-9)
    assert [(r["status"], r["reason"]) for r in records] == [("skipped", "time budget of 1e-09 s spent")]


def _record(backend, ms):
    return {"op": "rms_norm", "partial": 1.0, "label": "RMSNorm", "M": 8, "N": 64, "dtype": "fp32",
            "pass": "fwd", "backend": backend, "status": "ok", "reason": None, "ms": ms,
            "ms_p20": ms, "ms_p80": ms, "gbps": 1.0 / ms, "pct_copy": 10.0 / ms}


def _meta(**extra):
    return {"device": "test CPU", "device_type": "cpu", "threads": 2, "torch": "x", "copy_gbps": 10.0,
            "timing": "t", "bytes_model": "b", "ours": "cpu",
            "backends": {"native": {"available": True}, "compile": {"available": True},
                         "cpu": {"available": True}}, **extra}


def test_table_ratios_are_against_ours():
    table = render_table([_record("native", 3.0), _record("compile", 1.5), _record("cpu", 1.0)], _meta())
    header, _, row = table.splitlines()[-3:]
    assert "cpu vs native" in header and "cpu vs best other" in header
    assert row.split()[-2:] == ["3.00x", "1.50x"]
    assert "WARNING" not in table


def test_table_warns_when_the_host_was_busy():
    meta = _meta(load_average={"before": 3.5, "after": 6.25}, logical_cpus=2)
    table = render_table([_record("cpu", 1.0)], meta)
    assert "WARNING: load average 6.2 on 2 CPUs" in table and "try --threads 1" in table


# ---------------------------------------------------------------------------- the command
@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_command_writes_table_json_csv_png(tmp_path, small_cache, restore_threads, capsys):
    out = tmp_path / "bench"
    backends = "eager,native,compile,cpu,triton,liger"
    assert main(["--quick", "--M", "8", "--N", "64", "--partials", "0.125", "--backends", backends,
                 "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    data = json.loads((out / "bench-quick.json").read_text())
    meta, records = data["meta"], data["records"]
    for key in ("device", "device_type", "threads", "copy_gbps", "torch", "triton", "git_sha", "date",
                "timing", "bytes_model", "backends", "command"):
        assert key in meta, key
    assert meta["device_type"] == "cpu" and meta["threads"] == 1 and meta["copy_gbps"] > 0
    assert not meta["backends"]["triton"]["available"] and "cuda" in meta["backends"]["triton"]["reason"]
    assert not meta["backends"]["liger"]["available"]
    available = [b for b, s in meta["backends"].items() if s["available"]]
    assert {"eager", "native", "compile"} <= set(available)
    assert meta["ours"] == ("cpu" if "cpu" in available else None)
    if platform.libc_ver()[0] == "glibc":  # freed memory is kept, so outputs are not page-faulted per call
        assert "M_MMAP_MAX=0" in meta["cpu_allocator"] and "allocator: glibc mallopt" in printed

    # every (op, backend, pass) of the grid has one record
    cases = {(r["label"], r["backend"], r["pass"]) for r in records}
    assert len(records) == len(cases) == 3 * len(available) * 3
    assert {r["backend"] for r in records} == set(available)
    for r in records:
        expected = "n/a" if (r["backend"], r["op"]) == ("native", "prms_norm") else "ok"
        assert r["status"] == expected, r

    with (out / "bench-quick.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == RECORD_FIELDS and len(rows) == len(records)
    assert (out / "bench-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for text in ("LayerNorm", "RMSNorm", "pRMSNorm p=0.125", "speedup over LayerNorm", "compile us"):
        assert text in printed


@pytest.mark.parametrize("args,flag,allowed", [
    (["--ops", "group_norm"], "--ops", "layer_norm, rms_norm, prms_norm"),
    (["--backends", "eager,cudnn"], "--backends", "eager, native, compile, triton, cpu, liger"),
    (["--passes", "forward"], "--passes", "fwd, bwd, fwdbwd"),
    (["--dtypes", "fp64"], "--dtypes", "bf16, fp16, fp32"),
    (["--device", "tpu"], "--device", "'auto', 'cpu', 'cuda'"),
    (["--M", "0"], "--M", "integers >= 1"),
    (["--N", "4k"], "--N", "integers >= 1"),
    (["--partials", "1.5"], "--partials", "(0, 1]"),
    (["--budget", "-3"], "--budget", "> 0"),
    (["--threads", "1,2"], "--threads", "an integer >= 1"),
])
def test_bad_arguments_name_the_flag_and_what_is_allowed(args, flag, allowed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in error and allowed in error, error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_cuda_only_backends_on_cpu_give_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["--backends", "triton,liger", "--M", "8", "--N", "64"])
    error = capsys.readouterr().err
    assert "--backends" in error and "triton: runs on cuda only" in error
    assert set(BACKEND_REGISTRY) >= {"triton", "liger"}


@pytest.mark.slow
def test_quick_grid_runs(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench-quick.json").exists()
    assert "speedup over LayerNorm" in capsys.readouterr().out


def test_an_interrupt_keeps_what_was_measured(small_cache):
    def interrupted(x, w, b):
        raise KeyboardInterrupt

    backends = [_fake_backend("good", lambda x, w, b: x * w), _fake_backend("stops", interrupted)]
    records = run_grid([Op("rms_norm"), Op("layer_norm")], [Shape(4, 8, "fp32")], backends, ["fwd"],
                       describe_device(CPU), make_timer(CPU, QUICK_PLAN), None)
    assert [(r["label"], r["backend"], r["status"], r["reason"]) for r in records] == [
        ("RMSNorm", "good", "ok", None), ("RMSNorm", "stops", "skipped", "interrupted"),
        ("LayerNorm", "good", "skipped", "interrupted"), ("LayerNorm", "stops", "skipped", "interrupted")]
