"""The Triton kernels against the references: grids on both paths, long rows, a fuzz, bad input.

Without a GPU these run in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py); the
`gpu` tests rerun the grids on CUDA and add the shapes too large for the interpreter. What every
backend must do (gradcheck, layouts, edge rows, compile) is in test_kernel_backends.py.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_cases import Case, check_case, covering_grid, force_looped_path, full_grid, run_op
from repro.kernels import layer_norm, ops, rms_norm

BACKEND = "triton"
LOOPED_N = 20000  # past the fused forward limit: the forward and backward take the looped path


@pytest.fixture
def looped(monkeypatch):
    force_looped_path(monkeypatch)


def _ids(cases):
    return [str(c) for c in cases]


COVER = list(covering_grid())


@pytest.mark.parametrize("case", COVER, ids=_ids(COVER))
def test_grid_matches_reference(case):
    check_case(case, BACKEND)


LOOPED_COVER = list(covering_grid(ns=(7, 41, 123), ms=(0, 3, 67)))


@pytest.mark.parametrize("case", LOOPED_COVER, ids=_ids(LOOPED_COVER))
def test_looped_path_matches_reference(case, looped):
    check_case(case, BACKEND)


@pytest.mark.parametrize("n", [123, 1000])
def test_looped_layernorm_statistics_keep_precision_far_from_zero(n, looped):
    """One read of the row for mean and variance: per-chunk statistics merged (Chan et al.), not a
    sum of squares, which in fp32 would lose the variance of rows around 1e4 (E[x^2] ~ 1e8)."""
    g = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(3, n, generator=g, dtype=torch.float64)
    y = layer_norm(x.float(), backend=BACKEND)
    want = layer_norm(x, backend="torch").float()
    torch.testing.assert_close(y, want, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize(
    "case",
    [
        Case("rms", 2, LOOPED_N, torch.bfloat16, "fp32", True, 0.0625, "inside"),
        Case("rms", 2, LOOPED_N, torch.float32, "x", False, 0.5, "outside"),
        Case("ln", 2, LOOPED_N, torch.float16, "x", True),
        Case("rms", 3, 9000, torch.float32, "fp32", False, 0.125, "inside"),  # fused fwd, looped bwd
        Case("rms", 3, 9000, torch.bfloat16, "x", False, 0.5, "outside"),  # fused bwd: 16K tile, one dW
        Case("ln", 3, 9000, torch.bfloat16, "fp32", True),
    ],
    ids=str,
)
def test_long_rows_match_reference(case):
    check_case(case, BACKEND)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(full_grid()), ids=str)
def test_full_grid_matches_reference(case):
    check_case(case, BACKEND)


# ------------------------------------------------------------------------------ fuzz
@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(0, 9),
    n=st.integers(1, 300),
    partial=st.floats(0.001, 1.0),
    eps_mode=st.sampled_from(["inside", "outside"]),
    weight=st.sampled_from(["none", "fp32", "x"]),
    bias=st.booleans(),
    op=st.sampled_from(["rms", "ln"]),
)
def test_fuzz_matches_reference(m, n, partial, eps_mode, weight, bias, op):
    partial = max(partial, 1.0 / n)  # keep k >= 1: the error for k < 1 is tested below
    check_case(Case(op, m, n, torch.float32, weight, bias, partial, eps_mode), BACKEND)


# ------------------------------------------------------------------------------ bad input
x16 = torch.randn(2, 16)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: rms_norm(x16, partial=0.0), "partial"),
        (lambda: rms_norm(x16, partial=1.5), "partial"),
        (lambda: rms_norm(x16, partial=0.05), "k = floor"),
        (lambda: rms_norm(x16, torch.ones(15)), "weight"),
        (lambda: rms_norm(x16, torch.ones(2, 16)), "weight"),
        (lambda: rms_norm(x16, bias=torch.ones(3)), "bias"),
        (lambda: layer_norm(x16, None, torch.ones(3)), "bias"),
        (lambda: layer_norm(x16, torch.ones(17)), "weight"),
        (lambda: rms_norm(x16, eps_mode="middle"), "eps_mode"),
        (lambda: rms_norm(x16, backend="cuda"), "backend"),
        (lambda: layer_norm(x16, backend="fast"), "backend"),
        (lambda: rms_norm(x16, eps=0.0), "eps"),
        (lambda: rms_norm(x16, eps=-1e-6), "eps"),
        (lambda: layer_norm(x16, eps=float("nan")), "eps"),
        (lambda: layer_norm(x16, eps=float("inf")), "eps"),
        (lambda: rms_norm(torch.empty(2, 0)), "last dim"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("fn", [rms_norm, layer_norm])
def test_non_float_input_is_rejected(fn):
    with pytest.raises(TypeError, match="floating"):
        fn(torch.arange(16).view(2, 8))


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        rms_norm(x16, backend="triton")


def test_auto_backend_on_cpu_is_not_triton():
    assert ops.resolve_backend("auto", x16) != "triton"


# ------------------------------------------------------------------------------ on a GPU
gpu = pytest.mark.gpu


# On CUDA a smaller grid: the interpreter proves the arithmetic on COVER; here each distinct
# tile compiles (seconds each), so the widths are one per code path -- packed rows with masked
# columns (41), scalar access (1000), 128-bit access (4096) -- in the dtypes of the benchmark.
GPU_COVER = list(covering_grid(ns=(41, 1000, 4096), ms=(3, 67), dtypes=(torch.float32, torch.bfloat16)))


@gpu
@pytest.mark.parametrize("case", GPU_COVER, ids=_ids(GPU_COVER))
def test_gpu_grid_matches_reference(case):
    check_case(case, BACKEND, device="cuda")


GPU_LARGE = [
    Case("rms", 32768, 8192, torch.bfloat16, "fp32", False, 1.0, "inside"),
    Case("rms", 32768, 8192, torch.bfloat16, "x", False, 0.0625, "outside"),
    Case("ln", 32768, 8192, torch.bfloat16, "x", True),
    Case("rms", 64, 65536, torch.bfloat16, "fp32", True, 0.125, "inside"),
    Case("ln", 64, 65536, torch.float32, "fp32", True),
    Case("rms", 16, 262144, torch.bfloat16, "x", False, 0.25, "inside"),
    Case("ln", 16, 262144, torch.bfloat16, "x", True),
]


@gpu
@pytest.mark.parametrize("case", GPU_LARGE, ids=str)
def test_gpu_large_shapes_match_reference(case):
    check_case(case, BACKEND, device="cuda")


@gpu
@pytest.mark.parametrize("op", ["rms", "ln"])
def test_gpu_tensor_over_2_31_elements(op):
    """int64 offsets: rows past element 2^31 are normalized like the first ones."""
    n = 16384
    m = (2**31) // n + 64
    need = 2 * m * n * 2 * 1.3  # x and y in bf16, with headroom
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free on the GPU")
    x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    case = Case(op, m, n, torch.bfloat16, "none", False, 0.5)
    with torch.no_grad():
        y = run_op(case, x, None, None, BACKEND)
        for rows in (slice(0, 4), slice(m - 4, m)):
            want = run_op(case, x[rows].double(), None, None, "torch").to(torch.bfloat16)
            torch.testing.assert_close(y[rows], want, atol=5e-2, rtol=5e-2)
    del x, y


@gpu
def test_gpu_inductor_fullgraph_and_cuda_graph_capture():
    def f(x, w, b):
        return layer_norm(rms_norm(x, w, partial=0.125, backend=BACKEND) * 2, w, b, backend=BACKEND)

    x = torch.randn(256, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(1024, device="cuda", requires_grad=True)
    b = torch.randn(1024, device="cuda", requires_grad=True)
    eager = f(x, w, b)
    compiled = torch.compile(f, fullgraph=True)(x, w, b)
    torch.testing.assert_close(compiled, eager)
    compiled.float().sum().backward()

    static_x = torch.randn(256, 1024, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        f(static_x, w, b)  # warm up (Triton compiles) outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = f(static_x, w, b)
        static_x.copy_(x.detach())
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(static_y, eager.detach())
