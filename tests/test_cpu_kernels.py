"""The fused C++ CPU kernels (backend="cpu") against the references, and their dispatch/fallback.

The same grids as the Triton kernels (kernel_cases.py) plus fp64; the first test to run compiles
the extension (cached on disk afterwards).
"""
from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from kernel_cases import (
    EPS, GRID_DTYPES, Case, check_case, covering_grid, forward_backward, full_grid, make_inputs, run_op,
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


@pytest.mark.slow
@pytest.mark.parametrize("case", list(full_grid(dtypes=DTYPES)), ids=str)
def test_full_grid_matches_reference(case):
    check_case(case, BACKEND)


# ------------------------------------------------------------------------------ streaming stores
# Outputs over a size threshold are written with non-temporal stores (aligned fp32/fp64 rows
# only). Threshold 0 sends these small shapes down that path: N = 16 and 4096 give aligned rows,
# 123 and 1000 rows whose alignment varies (so both store kinds meet in one tensor).
STREAM_CASES = list(covering_grid(ns=(16, 123, 1000, 4096), ms=(1, 5, 67), dtypes=(torch.float32, torch.float64)))


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


# ------------------------------------------------------------------------------ gradcheck
def _gradcheck(fn, m=3, n=40):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(m, n, dtype=torch.float64, generator=g, requires_grad=True)
    w = (1 + 0.3 * torch.randn(n, dtype=torch.float64, generator=g)).requires_grad_(True)
    b = (0.3 * torch.randn(n, dtype=torch.float64, generator=g)).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("partial", [1.0, 0.5, 0.125])
@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
def test_rms_gradcheck(partial, eps_mode):
    _gradcheck(lambda x, w, b: rms_norm(x, w, EPS[eps_mode], partial=partial, eps_mode=eps_mode, backend=BACKEND, bias=b))


def test_ln_gradcheck():
    _gradcheck(lambda x, w, b: layer_norm(x, w, b, backend=BACKEND))


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


# ------------------------------------------------------------------------------ layouts
def test_row_strided_input_is_read_in_place():
    wide = torch.randn(6, 80)
    x = wide[:, :50]
    assert ops.as_rows(x).stride(0) == 80  # the kernels get the strided view, not a copy
    check_layout(x, "rms")
    check_layout(x, "ln")


def check_layout(x, op, dy=None):
    n = x.shape[-1]
    w, b = torch.randn(n), torch.randn(n)
    case = Case(op, 0, n, x.dtype, "fp32", True, 0.5, "outside")
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    refs = [t.clone().requires_grad_(True) for t in (x, w, b)]
    y = run_op(case, *leaves, backend=BACKEND)
    y_ref = run_op(case, *refs, backend="torch")
    assert y.shape == x.shape
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y) if dy is None else dy
    y.backward(dy)
    y_ref.backward(dy)
    for a, r in zip(leaves, refs):
        torch.testing.assert_close(a.grad, r.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(2, 3, 33),
        lambda: torch.randn(2, 3, 4, 33),
        lambda: torch.randn(2, 33, 5).transpose(1, 2),  # last dim not contiguous: copied
        lambda: torch.randn(4, 6, 40)[:, 1:5, :33],  # leading dims not collapsible: copied
        lambda: torch.randn(33),
    ],
    ids=["3d", "4d", "transposed", "sliced-3d", "1d"],
)
@pytest.mark.parametrize("op", ["rms", "ln"])
def test_any_layout_matches_reference(make, op):
    x = make()
    # a gradient whose rows are strided too: the backward reads it in place
    dy = torch.randn(*x.shape[:-1], x.shape[-1] + 7)[..., : x.shape[-1]]
    check_layout(x, op, dy)


# ------------------------------------------------------------------------------ edge rows
@pytest.mark.parametrize("op,eps_mode", [("rms", "inside"), ("rms", "outside"), ("ln", "inside")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_zero_rows_are_finite(op, eps_mode, dtype):
    x = torch.zeros(3, 40, dtype=dtype)
    x[1] = torch.randn(40)
    leaves = [x.clone().requires_grad_(True), torch.randn(40, requires_grad=True), torch.randn(40, requires_grad=True)]
    y = run_op(Case(op, 3, 40, dtype, "fp32", True, 0.25, eps_mode), *leaves, BACKEND)
    dy = torch.randn_like(y)
    y.backward(dy)
    for t in [y] + [leaf.grad for leaf in leaves]:
        assert torch.isfinite(t).all()
    if op == "rms":
        # a zero row has no gradient through its statistic: dx = rstd * dy * w exactly as far as
        # the statistic term goes, with rstd = 1/sqrt(eps) inside and 1/eps outside
        eps = EPS[eps_mode]
        rstd = eps ** -0.5 if eps_mode == "inside" else 1.0 / eps
        want = (rstd * dy[0].float() * leaves[1].detach()).to(dtype)
        torch.testing.assert_close(leaves[0].grad[0], want, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_rows_where_eps_placement_matters(eps_mode, dtype):
    """Rows at 1e-7 scale: eps = 1e-8 inside vs outside the root give visibly different scales."""
    case = Case("rms", 4, 64, dtype, "x", True, 0.5, eps_mode)
    x, w, b, dy = make_inputs(case)
    x = 1e-7 * x
    got = [rms_norm(x, w, 1e-8, eps_mode=mode, partial=0.5, backend=BACKEND) for mode in ("inside", "outside")]
    assert (got[0] - got[1]).abs().max() > 1e-3  # the modes are not interchangeable at this scale
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    refs = [t.double().requires_grad_(True) for t in (x, w, b)]
    y = rms_norm(leaves[0], leaves[1], 1e-8, eps_mode=eps_mode, partial=0.5, backend=BACKEND, bias=leaves[2])
    y_ref = reference.rms_norm(refs[0], refs[1], refs[2], 1e-8, partial=0.5, eps_mode=eps_mode)
    y.backward(dy)
    y_ref.backward(dy.double())
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(y.double(), y_ref.detach(), rtol=rtol, atol=rtol)
    for a, r in zip(leaves, refs):  # dx is ~1e7: compare relative to its size
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=rtol, atol=rtol * r.grad.abs().max().item())


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


# (1024, 4096): enough partial sums that adding them up is split across threads too
@pytest.mark.parametrize("m,n", [(1000, 123), (1024, 4096)])
@pytest.mark.parametrize("op", ["rms", "ln"])
def test_parameter_grads_are_deterministic_for_any_thread_count(op, m, n):
    case = Case(op, m, n, torch.float32, "fp32", True, 0.5)
    if m * n > 1e6:
        check_case(case, BACKEND)
    x, w, b, dy = make_inputs(case)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n_threads in (threads, threads, 1, 3):
            torch.set_num_threads(n_threads)
            leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
            run_op(case, *leaves, BACKEND).backward(dy)
            grads.append([t.grad for t in leaves])
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        for a, b_ in zip(grads[0], other):
            assert torch.equal(a, b_)


# ------------------------------------------------------------------------------ torch.compile
def test_compiles_fullgraph_with_autograd(monkeypatch):
    # as if this were the process's first use: the extension gets loaded while dynamo traces
    monkeypatch.setattr(cpu_kernels, "_ops", None)

    def f(x, w, b):
        return layer_norm(rms_norm(x, w, partial=0.5, backend=BACKEND) * 2, w, b, backend=BACKEND).sum()

    x = torch.randn(3, 32, requires_grad=True)
    w = torch.randn(32, requires_grad=True)
    b = torch.randn(32, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
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
    torch.library.opcheck(torch.ops.repro.rms_norm_fwd, (x, w, None, 1e-6, 8, True, BACKEND))
    torch.library.opcheck(torch.ops.repro.layer_norm_fwd, (x, w, torch.randn(16), 1e-5, BACKEND))


# ------------------------------------------------------------------------------ dispatch
def test_auto_backend_on_cpu_uses_the_kernels():
    assert ops.resolve_backend("auto", torch.randn(2, 8)) == "cpu"


def test_cpu_backend_on_another_device_is_a_clear_error():
    with pytest.raises(ValueError, match="backend='cpu' needs a CPU tensor"):
        rms_norm(torch.randn(2, 8, device="meta"), backend=BACKEND)


@pytest.fixture
def failing_build(monkeypatch):
    """The extension as it would be without a working compiler: the build raises."""

    def fail():
        raise RuntimeError("Error building extension 'repro_cpu_norms'")

    monkeypatch.setattr(cpu_kernels, "_build", fail)
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
