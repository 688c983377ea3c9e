"""The fused C++ CPU kernels (backend="cpu") against the references, and their dispatch/fallback.

The same grids as the Triton kernels (kernel_cases.py) plus fp64, the streaming-store path, and
thread-count determinism on a large shape; what every backend must do (gradcheck, layouts, edge
rows, compile) is in test_kernel_backends.py. The first test to run compiles the extension
(cached on disk afterwards).
"""
from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from kernel_cases import (
    GRID_DTYPES, Case, check_case, covering_grid, forward_backward, full_grid, make_inputs,
    parameter_grads_over_thread_counts, run_op,
)
from repro.kernels import cpu as cpu_kernels
from repro.kernels import layer_norm, ops, reference, rms_norm

BACKEND = "cpu"
DTYPES = GRID_DTYPES + (torch.float64,)

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="no C++ compiler: the CPU kernels cannot be built here (the fallback is tested where they can)",
)


@pytest.fixture(scope="module", autouse=True)
def built_extension():
    # a compiler is present, so a failed build is a bug to report, not a reason to skip
    assert cpu_kernels.available(), f"the CPU kernels failed to build: {cpu_kernels.build_error()}"


def _ids(cases):
    return [str(c) for c in cases]


COVER = list(covering_grid(dtypes=DTYPES))


@pytest.mark.parametrize("case", COVER, ids=_ids(COVER))
def test_grid_matches_reference(case):
    check_case(case, BACKEND)


# Every partial ratio and eps mode with every weight/bias option on one awkward shape (k and N
# not multiples of the vector width), in each dtype: the options the covering grid only cycles.
OPTIONS = [
    Case("rms", 67, 123, dtype, weight, bias, p, mode)
    for dtype in DTYPES for weight in ("none", "fp32", "x") for bias in (False, True)
    for p in (0.0625, 0.125, 0.5, 1.0) for mode in ("inside", "outside")
] + [Case("ln", 67, 123, dtype, weight, bias) for dtype in DTYPES for weight in ("none", "fp32", "x") for bias in (False, True)]


@pytest.mark.parametrize("case", OPTIONS, ids=_ids(OPTIONS))
def test_every_option_matches_reference(case):
    check_case(case, BACKEND)


# The per-channel affine (affine_dim=-2) over the grid's row lengths, dtypes and options: the rows
# of (B, C, N) maps, B = 2 or 5 samples of C = 3 or 7 channels (B != C: row r is channel r % C).
CHANNEL_COVER = [
    Case(c.op, b * ch, c.n, c.dtype, c.weight, c.bias, c.partial, c.eps_mode, channels=ch)
    for i, c in enumerate(covering_grid(ms=(1,), dtypes=DTYPES)) for b, ch in [((2, 3), (5, 7))[i % 2]]
]


@pytest.mark.parametrize("case", CHANNEL_COVER, ids=_ids(CHANNEL_COVER))
def test_per_channel_grid_matches_reference(case):
    check_case(case, BACKEND)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(full_grid(dtypes=DTYPES)), ids=str)
def test_full_grid_matches_reference(case):
    check_case(case, BACKEND)


# ------------------------------------------------------------------------------ streaming stores
# Outputs over a size threshold are written with non-temporal stores (aligned fp32/fp64 rows
# only). Threshold 0 sends these small shapes down that path: N = 16 and 4096 give aligned rows,
# 123 and 1000 rows whose alignment varies (so both store kinds meet in one tensor).
STREAM_CASES = list(covering_grid(ns=(16, 123, 1000, 4096), ms=(1, 5, 67), dtypes=(torch.float32, torch.float64))) + [
    Case(op, 15, n, torch.float32, "fp32", True, 0.5 if op == "rms" else 1.0, channels=5)
    for op in ("rms", "ln") for n in (16, 123)
]


@pytest.mark.parametrize("case", STREAM_CASES, ids=_ids(STREAM_CASES))
def test_streaming_stores_match_reference_and_normal_stores_bit_for_bit(case):
    x, w, b, dy = make_inputs(case)
    with cpu_kernels.stream_threshold(0):
        check_case(case, BACKEND)
        streamed = forward_backward(case, x, w, b, dy, BACKEND)
    with cpu_kernels.stream_threshold(2**62):
        stored = forward_backward(case, x, w, b, dy, BACKEND)
    for got, want in zip(streamed, stored):
        assert (got is None and want is None) or torch.equal(got, want), case


def test_stream_threshold_is_restored_and_rejects_negative_sizes():
    ops_ns = cpu_kernels.load()
    before = ops_ns.set_stream_threshold(123)
    try:
        with cpu_kernels.stream_threshold(0):
            assert ops_ns.set_stream_threshold(0) == 0
        assert ops_ns.set_stream_threshold(123) == 123
        with pytest.raises(RuntimeError, match="streaming threshold must be >= 0"):
            ops_ns.set_stream_threshold(-1)
    finally:
        ops_ns.set_stream_threshold(before)


# ------------------------------------------------------------------------------ row groups
# The backward sweeps 1 row at a time for N <= 1024 and 4 above (speed; see norms.cpp). Every
# group size must give the reference's gradients, with row counts that leave a short last group
# (5, 67) and blocks of rows not a multiple of the group; dx is the same bits whatever the group
# (each row's dx is computed alone), dw/db only add up in another order.
GROUP_CASES = list(covering_grid(ns=(16, 123, 1000, 2048), ms=(1, 5, 67), dtypes=(torch.float32, torch.float64)))


@pytest.mark.parametrize("case", GROUP_CASES, ids=_ids(GROUP_CASES))
def test_every_row_group_size_matches_reference(case):
    x, w, b, dy = make_inputs(case)
    results = []
    for rows in (1, 2, 3, 4):
        with cpu_kernels.group_rows(rows):
            check_case(case, BACKEND)
            results.append(forward_backward(case, x, w, b, dy, BACKEND))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            assert (got is None) == (want is None), case
        assert torch.equal(other[0], results[0][0]) and torch.equal(other[1], results[0][1]), case


def test_group_rows_is_restored_and_rejects_sizes_out_of_range():
    ops_ns = cpu_kernels.load()
    with cpu_kernels.group_rows(3):
        assert ops_ns.set_group_rows(3) == 3
    assert ops_ns.set_group_rows(0) == 0
    with pytest.raises(RuntimeError, match=r"group rows must be in \[0, 4\]"):
        ops_ns.set_group_rows(5)


# ------------------------------------------------------------------------------ determinism
# (1024, 4096): enough partial sums that adding them up is split across threads too
@pytest.mark.parametrize("channels", [0, 32])
@pytest.mark.parametrize("op", ["rms", "ln"])
def test_large_parameter_grads_match_reference_and_any_thread_count(op, channels):
    case = Case(op, 1024, 4096, torch.float32, "fp32", True, 0.5, channels=channels)
    check_case(case, BACKEND)
    grads = parameter_grads_over_thread_counts(case, BACKEND)
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------ dispatch
def test_auto_backend_on_cpu_uses_the_kernels():
    assert ops.resolve_backend("auto", torch.randn(2, 8)) == "cpu"


def test_cpu_backend_on_another_device_is_a_clear_error():
    with pytest.raises(ValueError, match="backend='cpu' needs a CPU tensor"):
        rms_norm(torch.randn(2, 8, device="meta"), backend=BACKEND)


@pytest.fixture
def failing_build(monkeypatch):
    """The extension as it would be without a compiler (a failing compiler is an error instead:
    tests/test_cpu_build_policy.py)."""
    monkeypatch.setattr(cpu_kernels, "missing_toolchain", lambda: "no C++ compiler: 'c++' is not on PATH")
    monkeypatch.setattr(cpu_kernels, "_ops", None)
    monkeypatch.setattr(cpu_kernels, "_error", None)


def test_failed_build_falls_back_to_torch_and_warns_once(failing_build):
    x = torch.randn(4, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = rms_norm(x, partial=0.5)
        y2 = layer_norm(x)
    assert [str(w.message) for w in caught if "could not be built" in str(w.message)] and len(caught) == 1
    assert torch.equal(y, reference.rms_norm(x, partial=0.5))
    assert torch.equal(y2, reference.layer_norm(x))
    with pytest.raises(ValueError, match="backend='cpu' is unavailable"):
        rms_norm(x, backend=BACKEND)


# ------------------------------------------------------------------------------ fresh large outputs
# 8192 x 1024 fp32 outputs are 32 MiB: glibc maps each afresh, so the kernels take the path for
# memory not yet backed by pages (normal stores, huge pages asked for) -- still the reference's answer.
@pytest.mark.parametrize("op", ["rms", "ln"])
def test_fresh_large_outputs_match_reference(op):
    check_case(Case(op, 8192, 1024, torch.float32, "fp32", True, 0.25 if op == "rms" else 1.0), BACKEND)


# ------------------------------------------------------------------------------ eager route vs custom op
ROUTE_CASES = [
    Case("rms", 67, 123, torch.float32, "fp32", True, 0.125, "outside"),
    Case("rms", 33, 256, torch.bfloat16, "x", False, 1.0, "inside"),
    Case("rms", 16, 64, torch.float64, "none", False, 0.5, "inside"),
    Case("ln", 67, 123, torch.float32, "fp32", True),
    Case("ln", 33, 256, torch.bfloat16, "none", False),
    Case("rms", 24, 100, torch.bfloat16, "fp32", True, 0.125, "inside", channels=4),
    Case("ln", 24, 100, torch.float32, "fp32", True, channels=4),
]


@pytest.mark.parametrize("case", ROUTE_CASES, ids=_ids(ROUTE_CASES))
def test_eager_route_and_custom_op_give_identical_results(case, monkeypatch):
    x, w, b, dy = make_inputs(case)
    results, grad_fns = {}, {}
    for fast in (True, False):
        monkeypatch.setattr(ops, "EAGER_FAST_PATH", fast)
        results[fast] = forward_backward(case, x, w, b, dy, BACKEND)
        leaf = x.detach().requires_grad_()
        grad_fns[fast] = run_op(case, leaf, w, b, BACKEND).grad_fn
    for got, want in zip(results[True], results[False]):
        assert (got is None and want is None) or torch.equal(got, want), case
    # the two routes really ran: the eager one through the C++ autograd node, not Python's (a
    # Python node's name() is refused by older torch, e.g. 2.9: its class name says the same)
    assert "CppNode" in grad_fns[True].name() and "repro" in type(grad_fns[False]).__name__


@pytest.mark.parametrize("op", ["rms", "ln"])
def test_double_backward_is_refused_in_one_line(op):
    case = Case(op, 4, 8, torch.float32, "fp32", True)
    x, w, b, _ = make_inputs(case)
    x.requires_grad_()
    y = run_op(case, x, w, b, BACKEND)
    with pytest.raises(RuntimeError, match="backward is not differentiable .*use backend='torch'"):
        torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    (first,) = torch.autograd.grad(run_op(case, x, w, b, BACKEND).pow(2).sum(), x)  # first order is fine
    assert first.shape == x.shape and torch.isfinite(first).all()


def test_tracing_takes_the_custom_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(4, 8)
    assert ops._eager(x)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert not ops._eager(fake)
        y = rms_norm(fake, backend=BACKEND)  # the custom op's fake implementation answers
        assert y.shape == (4, 8)
    compiled = torch.compile(lambda t: rms_norm(t, backend=BACKEND), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), rms_norm(x, backend=BACKEND))


# ------------------------------------------------------------------------------ capability builds
def test_forcing_a_capability_this_cpu_lacks_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(cpu_kernels.CAPABILITY_ENV, "AVX1024")
    with pytest.raises(ValueError, match="REPRO_CPU_CAPABILITY='AVX1024' is not allowed on this CPU: must be one of DEFAULT"):
        cpu_kernels.build_capability()
    monkeypatch.setenv(cpu_kernels.CAPABILITY_ENV, "default")
    assert cpu_kernels.build_capability() == "DEFAULT"
    monkeypatch.delenv(cpu_kernels.CAPABILITY_ENV)
    assert cpu_kernels.build_capability() in cpu_kernels.CAPABILITIES


PORTABLE_CHECK = """
import sys, torch
sys.path.insert(0, {tests!r})
from kernel_cases import Case, check_case
from repro.kernels import cpu
assert cpu.available(), cpu.build_error()
assert cpu.build_capability() == "DEFAULT"
for case in [Case("rms", 37, 77, torch.float32, "fp32", True, 0.25, "outside"), Case("ln", 37, 77, torch.bfloat16, "x", True),
             Case("rms", 8192, 1024, torch.float32, "fp32", False), Case("ln", 5, 300, torch.float64, "none", False),
             # the per-channel mode (ConvNorm's gain per row) on this build's kernels too
             Case("rms", 15, 77, torch.bfloat16, "fp32", True, 0.25, "inside", channels=3),
             Case("ln", 15, 77, torch.float32, "fp32", True, channels=5)]:
    check_case(case, "cpu")
# auto on this build: RMSNorm on the C++ kernels, LayerNorm on F.layer_norm (kernels/ops.py says why)
from repro.kernels import ops
x = torch.randn(4, 16)
assert cpu.loaded_capability() == "DEFAULT"
assert ops.resolve_backend("auto", x) == "cpu" and ops.layer_norm_backend("auto", x) == "native"
print("portable ok")
"""


def test_portable_build_without_x86_intrinsics_compiles_and_matches_reference():
    """The DEFAULT build is what aarch64 and other non-x86 CPUs compile: at::vec's portable code with
    no x86 intrinsics (norms.cpp includes immintrin.h only in the AVX2/AVX-512 builds). Forced here
    on x86 through REPRO_CPU_CAPABILITY, in its own process (one process loads one build)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = PORTABLE_CHECK.format(tests=str(Path(__file__).parent))
    env = {**os.environ, cpu_kernels.CAPABILITY_ENV: "DEFAULT"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0 and "portable ok" in done.stdout, done.stderr[-3000:]
