"""The Triton kernels against the references: grids, gradcheck, layouts, edge rows, bad input.

Without a GPU these run in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py); the
`gpu` tests rerun the grids on CUDA and add the shapes too large for the interpreter.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_cases import EPS, Case, check_case, covering_grid, full_grid, make_inputs, run_op
from repro.kernels import layer_norm, ops, reference, rms_norm
from repro.kernels.triton import _launch

BACKEND = "triton"
LOOPED_N = 20000  # past the fused forward limit: the forward and backward take the looped path


@pytest.fixture
def looped(monkeypatch):
    """Force the looped path (statistics kernel + column-chunk apply) onto small rows."""
    monkeypatch.setattr(_launch, "FUSED_FWD_N", 1)
    monkeypatch.setattr(_launch, "FUSED_BWD_N", 1)
    monkeypatch.setattr(_launch, "LOOP_BLOCK_N", 16)


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


@pytest.mark.parametrize(
    "case",
    [
        Case("rms", 2, LOOPED_N, torch.bfloat16, "fp32", True, 0.0625, "inside"),
        Case("rms", 2, LOOPED_N, torch.float32, "x", False, 0.5, "outside"),
        Case("ln", 2, LOOPED_N, torch.float16, "x", True),
        Case("rms", 3, 9000, torch.float32, "fp32", False, 0.125, "inside"),  # fused fwd, looped bwd
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


# ------------------------------------------------------------------------------ gradcheck
def _gradcheck(fn, m, n, fast_mode=False):
    """fast_mode checks random projections of the Jacobian: one numerical derivative per input
    instead of one per element, which the interpreter-run kernels need to stay quick."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(m, n, dtype=torch.float64, generator=g, requires_grad=True)
    w = (1 + 0.3 * torch.randn(n, dtype=torch.float64, generator=g)).requires_grad_(True)
    b = (0.3 * torch.randn(n, dtype=torch.float64, generator=g)).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=fast_mode)


RMS_VARIANTS = [(p, mode) for p in (1.0, 0.5, 0.125) for mode in ("inside", "outside")]


@pytest.mark.parametrize("partial,eps_mode", RMS_VARIANTS)
def test_reference_rms_gradcheck(partial, eps_mode):
    _gradcheck(
        lambda x, w, b: reference.rms_norm(x, w, b, eps=EPS[eps_mode], partial=partial, eps_mode=eps_mode), 3, 16
    )


def test_reference_ln_gradcheck():
    _gradcheck(lambda x, w, b: reference.layer_norm(x, w, b), 3, 16)


@pytest.mark.parametrize("path", ["fused", "looped"])
@pytest.mark.parametrize("partial,eps_mode", RMS_VARIANTS)
def test_kernel_rms_gradcheck(partial, eps_mode, path, request):
    if path == "looped":
        request.getfixturevalue("looped")
    _gradcheck(
        lambda x, w, b: rms_norm(x, w, EPS[eps_mode], partial=partial, eps_mode=eps_mode, backend=BACKEND, bias=b),
        3, 40, fast_mode=True,
    )


@pytest.mark.parametrize("path", ["fused", "looped"])
def test_kernel_ln_gradcheck(path, request):
    if path == "looped":
        request.getfixturevalue("looped")
    _gradcheck(lambda x, w, b: layer_norm(x, w, b, backend=BACKEND), 3, 40, fast_mode=True)


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


# ------------------------------------------------------------------------------ partial = 1
def test_partial_one_is_rmsnorm_bit_for_bit():
    x, w, _, dy = make_inputs(Case("rms", 5, 300, torch.bfloat16, "fp32", False))
    outs = []
    for kwargs in ({}, {"partial": 1.0}, {"partial": 1.0 - 1e-12}):  # floor(p * N) = N - 1 for the last
        leaf = x.clone().requires_grad_(True)
        y = rms_norm(leaf, w, backend=BACKEND, **kwargs)
        y.backward(dy)
        outs.append((y, leaf.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], outs[2][0])  # k = N - 1 is a different statistic


def test_partial_statistic_ignores_the_tail():
    """pRMSNorm's output depends on x[k:] only through those elements themselves."""
    x = torch.randn(4, 64)
    x2 = x.clone()
    x2[:, 8:] *= 100.0  # k = 8 for p = 0.125
    y, y2 = (rms_norm(t, partial=0.125, backend=BACKEND) for t in (x, x2))
    torch.testing.assert_close(y[:, :8], y2[:, :8])
    torch.testing.assert_close(y2[:, 8:], 100.0 * y[:, 8:], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ layouts
def test_row_strided_input_is_not_copied():
    wide = torch.randn(6, 80)
    x = wide[:, :50]
    assert ops.as_rows(x).data_ptr() == x.data_ptr()
    for op in ("rms", "ln"):
        y = run_op(Case(op, 6, 50, torch.float32, "fp32", True, 0.5), x, torch.ones(50), torch.zeros(50), BACKEND)
        want = run_op(Case(op, 6, 50, torch.float32, "fp32", True, 0.5), x.contiguous(), torch.ones(50), torch.zeros(50), "torch")
        torch.testing.assert_close(y, want)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(2, 3, 33),  # 3D
        lambda: torch.randn(2, 3, 4, 33),  # 4D
        lambda: torch.randn(2, 33, 5).transpose(1, 2),  # last dim not contiguous: copied
        lambda: torch.randn(4, 6, 40)[:, 1:5, :33],  # leading dims not collapsible: copied
        lambda: torch.randn(33),  # a single row
    ],
    ids=["3d", "4d", "transposed", "sliced-3d", "1d"],
)
@pytest.mark.parametrize("op", ["rms", "ln"])
def test_any_layout_matches_reference(make, op):
    x = make()
    n = x.shape[-1]
    w = torch.randn(n)
    b = torch.randn(n)
    case = Case(op, 0, n, torch.float32, "fp32", True, 0.5, "outside")
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    refs = [t.clone().requires_grad_(True) for t in (x, w, b)]
    y = run_op(case, *leaves, backend=BACKEND)
    y_ref = run_op(case, *refs, backend="torch")
    assert y.shape == x.shape
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y).transpose(0, -1).contiguous().transpose(0, -1)  # a strided gradient
    y.backward(dy)
    y_ref.backward(dy)
    for a, r in zip(leaves, refs):
        torch.testing.assert_close(a.grad, r.grad, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------ edge rows
@pytest.mark.parametrize("op,eps_mode", [("rms", "inside"), ("rms", "outside"), ("ln", "inside")])
@pytest.mark.parametrize("path", ["fused", "looped"])
def test_all_zero_rows_are_finite(op, eps_mode, path, request):
    if path == "looped":
        request.getfixturevalue("looped")
    x = torch.zeros(3, 40)
    x[1] = torch.randn(40)
    leaves = [x.clone().requires_grad_(True), torch.randn(40, requires_grad=True), torch.randn(40, requires_grad=True)]
    y = run_op(Case(op, 3, 40, torch.float32, "fp32", True, 0.25, eps_mode), *leaves, BACKEND)
    y.sum().backward()
    for t in [y] + [leaf.grad for leaf in leaves]:
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
def test_tiny_rows_where_eps_placement_matters(eps_mode):
    """Rows at 1e-7 scale: eps = 1e-8 inside vs outside the root give visibly different scales."""
    x = 1e-7 * torch.randn(4, 64, dtype=torch.float64)
    case = Case("rms", 4, 64, torch.float64, "none", False, 0.5, eps_mode)
    check_case(case, BACKEND)
    y_in = rms_norm(x, None, 1e-8, eps_mode="inside", backend=BACKEND)
    y_out = rms_norm(x, None, 1e-8, eps_mode="outside", backend=BACKEND)
    assert (y_in - y_out).abs().max() > 1e-3  # the modes are not interchangeable at this scale
    x32 = x.float()
    for mode in ("inside", "outside"):
        torch.testing.assert_close(
            rms_norm(x32, None, 1e-8, eps_mode=mode, backend=BACKEND),
            reference.rms_norm(x, None, None, 1e-8, eps_mode=mode).float(), rtol=1e-4, atol=1e-5,
        )


def test_empty_batch_gives_empty_outputs_and_zero_parameter_grads():
    for op in ("rms", "ln"):
        x = torch.empty(0, 16, requires_grad=True)
        w = torch.ones(16, requires_grad=True)
        b = torch.zeros(16, requires_grad=True)
        y = run_op(Case(op, 0, 16, torch.float32, "fp32", True), x, w, b, BACKEND)
        assert y.shape == (0, 16)
        y.sum().backward()
        assert x.grad.shape == (0, 16)
        assert torch.equal(w.grad, torch.zeros(16)) and torch.equal(b.grad, torch.zeros(16))


def test_parameter_grads_are_deterministic():
    case = Case("rms", 67, 123, torch.float32, "fp32", True, 0.5)
    x, w, b, dy = make_inputs(case)
    grads = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
        run_op(case, *leaves, BACKEND).backward(dy)
        grads.append([t.grad for t in leaves])
    for a, b_ in zip(*grads):
        assert torch.equal(a, b_)


# ------------------------------------------------------------------------------ torch.compile
def test_compiles_fullgraph_with_autograd():
    def f(x, w, b):
        return layer_norm(rms_norm(x, w, partial=0.5, backend=BACKEND) * 2, w, b, backend=BACKEND).sum()

    x = torch.randn(3, 32, requires_grad=True)
    w = torch.randn(32, requires_grad=True)
    b = torch.randn(32, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    compiled(x, w, b).backward()
    got = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    f(x, w, b).backward()
    for g, t in zip(got, (x, w, b)):
        torch.testing.assert_close(g, t.grad)


def test_ops_pass_the_custom_op_checks():
    """torch.library's opcheck: schema, fake (meta) impls and autograd registration agree."""
    x, w = torch.randn(3, 16), torch.randn(16)
    torch.library.opcheck(torch.ops.repro.rms_norm_fwd, (x, w, None, 1e-6, 8, False, BACKEND))
    torch.library.opcheck(torch.ops.repro.layer_norm_fwd, (x, w, torch.randn(16), 1e-5, BACKEND))


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


@gpu
@pytest.mark.parametrize("case", COVER, ids=_ids(COVER))
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
