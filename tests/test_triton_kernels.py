"""The Triton kernels against the references: grids on both paths, long rows, the per-channel
affine, a fuzz, bad input.

Without a GPU these run in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py); the
`gpu` tests rerun the grids on CUDA and add the shapes too large for the interpreter. What every
backend must do (gradcheck, layouts, edge rows, compile) is in test_kernel_backends.py.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_cases import (
    TOLERANCES, Case, check_case, covering_grid, force_looped_path, full_grid, make_inputs, reference_fp64, run_op,
)
from repro.kernels import layer_norm, ops, rms_norm
from repro.kernels.reference import compute_dtype
from repro.kernels.triton import backend as triton_kernels

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


# ------------------------------------------------------------------------------ per-channel affine
# affine_dim=-2, the kernels' PER_ROW specialization: x is (B, C, L) and row r is scaled and shifted
# by parameter r % C. B != C in every case, so a kernel that took the channel as r // B, or summed
# dW / dB over the wrong rows, fails. Fused widths: 40 (whole rows, every row in one tile) and 300
# (4-row backward tiles: the grid-stride loop over tiles, tiles that wrap past the last channel and
# a last tile with masked rows); looped: 41 columns in 16-column chunks ([col_tiles, M] partials).
CHANNEL_VARIANTS = [("rms", 1.0, "inside"), ("rms", 0.25, "outside"), ("rms", 0.25, "inside"),
                    ("rms", 1.0, "outside"), ("ln", 1.0, "inside")]
CHANNEL_PARAMS = [("fp32", True), ("x", False), ("none", True), ("x", True), ("fp32", False), ("none", False)]
CHANNEL_GROUPS = [(3, 5), (2, 3), (5, 2)]  # (B, C)


def channel_cases(ns):
    """Every width x dtype x variant once, the parameters and (B, C) cycled."""
    product = itertools.product(ns, (torch.float32, torch.bfloat16), CHANNEL_VARIANTS)
    for i, (n, dtype, (op, partial, mode)) in enumerate(product):
        weight, bias = CHANNEL_PARAMS[i % len(CHANNEL_PARAMS)]
        b, c = CHANNEL_GROUPS[i % len(CHANNEL_GROUPS)]
        yield Case(op, b * c, n, dtype, weight, bias, partial, mode, channels=c)


CHANNEL_FUSED = list(channel_cases((40, 300))) + [
    Case("rms", 0, 40, torch.float32, "fp32", True, 0.25, "outside", channels=3),  # no samples: zero dW, dB
    Case("ln", 0, 40, torch.float32, "fp32", True, channels=3),
]
CHANNEL_LOOPED = list(channel_cases((41,)))


@pytest.mark.parametrize("case", CHANNEL_FUSED, ids=_ids(CHANNEL_FUSED))
def test_per_channel_affine_matches_reference(case):
    check_case(case, BACKEND)


@pytest.mark.parametrize("case", CHANNEL_LOOPED, ids=_ids(CHANNEL_LOOPED))
def test_looped_per_channel_affine_matches_reference(case, looped):
    check_case(case, BACKEND)


@pytest.mark.parametrize("path", ["fused", "looped"])
@pytest.mark.parametrize("op", ["rms", "ln"])
def test_per_channel_affine_reads_row_strided_input_in_place(op, path, monkeypatch):
    """x and dy are (B, C, L) views into rows of 57 (row stride > L = 41): read at their stride."""
    if path == "looped":
        force_looped_path(monkeypatch)
    case = Case(op, 6, 41, torch.float32, "fp32", True, 0.25, "outside", channels=2)
    x, w, b, dy = make_inputs(case)
    wide_x, wide_dy = torch.zeros(*x.shape[:-1], 57), torch.zeros(*x.shape[:-1], 57)
    wide_x[..., :case.n], wide_dy[..., :case.n] = x, dy
    wide_x.requires_grad_(True)
    leaves = [p.clone().requires_grad_(True) for p in (w, b)]
    y = run_op(case, wide_x[..., :case.n], *leaves, BACKEND)
    y.backward(wide_dy[..., :case.n])
    got = [y.detach(), wide_x.grad[..., :case.n]] + [p.grad for p in leaves]
    for name, g, r in zip(("y", "dx", "dw", "db"), got, reference_fp64(case, x, w, b, dy)):
        atol, rtol = TOLERANCES[r.dtype]
        torch.testing.assert_close(g, r, atol=atol, rtol=rtol, msg=lambda m: f"{case} {name}: {m}")


@pytest.mark.parametrize("path", ["fused", "looped"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_per_channel_param_grads_are_per_channel_in_compute_dtype_and_deterministic(dtype, path, monkeypatch):
    """The backend's dW and dB: C values in fp32 (fp64 for fp64 x), bit-identical run to run
    (per-row partials reduced by torch in a fixed order, no atomics)."""
    if path == "looped":
        force_looped_path(monkeypatch)
    channels = 3
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(2, 6, 41, generator=g).to(dtype).unbind(0)
    w = torch.randn(channels, generator=g).to(dtype)
    runs = []
    for _ in range(2):
        _, rstd = triton_kernels.rms_norm_forward(x, w, w, 1e-6, 10, False, channels)
        rms_grads = triton_kernels.rms_norm_backward(dy, x, w, rstd, 1e-6, 10, False, True, channels)
        _, mean, rstd = triton_kernels.layer_norm_forward(x, w, w, 1e-5, channels)
        ln_grads = triton_kernels.layer_norm_backward(dy, x, w, mean, rstd, True, channels)
        runs.append([*rms_grads, *ln_grads])
    for got, again in zip(*runs):
        assert torch.equal(got, again)
    for grad in runs[0][1:3] + runs[0][4:6]:
        assert grad.shape == (channels,) and grad.dtype == compute_dtype(x)


def test_per_channel_rows_must_come_in_whole_groups():
    x = torch.randn(5, 8)
    with pytest.raises(ValueError, match="channels"):
        triton_kernels.rms_norm_forward(x, torch.ones(2), None, 1e-6, 8, False, 2)
    with pytest.raises(ValueError, match="channels"):
        triton_kernels.layer_norm_forward(x, torch.ones(2), None, 1e-5, 2)


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


# The per-channel affine (affine_dim=-2) on the conv maps of Table 10's model (batch 100, width
# 32: 32x32 and 16x16 maps in bf16, 6x6 in fp32) and on rows long enough for the looped path.
GPU_CHANNELS = [
    Case("rms", 3200, 1024, torch.bfloat16, "fp32", True, 0.125, "inside", channels=32),
    Case("ln", 6400, 256, torch.bfloat16, "fp32", True, channels=64),
    Case("rms", 6400, 36, torch.float32, "fp32", True, 1.0, "outside", channels=64),
    Case("ln", 16, 65536, torch.bfloat16, "fp32", True, channels=8),
    Case("rms", 16, 65536, torch.bfloat16, "x", False, 0.25, "inside", channels=8),
]


@gpu
@pytest.mark.parametrize("case", GPU_CHANNELS, ids=str)
def test_gpu_per_channel_affine_matches_reference(case):
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
