"""What every kernel backend must do, run against each of them: the C++ CPU kernels ("cpu"), the
Triton kernels on their fused path ("triton") and on their looped path forced onto small rows
("triton-looped"). Gradcheck, partial = 1, layouts, edge rows, deterministic parameter gradients,
torch.compile and the custom-op checks. The references' own gradcheck is here too.

What only one backend has (its shape grids, dispatch and build fallback, streaming stores, the
GPU-only shapes) stays in test_cpu_kernels.py and test_triton_kernels.py.
"""
from __future__ import annotations

import shutil

import pytest
import torch

from kernel_cases import (
    EPS, Case, check_case, force_looped_path, make_inputs, parameter_grads_over_thread_counts, run_op,
)
from repro.kernels import cpu as cpu_kernels
from repro.kernels import layer_norm, ops, reference, rms_norm

NO_COMPILER = shutil.which("c++") is None and shutil.which("g++") is None


@pytest.fixture(params=["cpu", "triton", "triton-looped"])
def backend(request, monkeypatch):
    """The backend name to pass to the ops (the looped variant is "triton" with small limits)."""
    if request.param == "cpu":
        if NO_COMPILER:
            pytest.skip("no C++ compiler: the CPU kernels cannot be built here")
        # a compiler is present, so a failed build is a bug to report, not a reason to skip
        assert cpu_kernels.available(), f"the CPU kernels failed to build: {cpu_kernels.build_error()}"
    if request.param == "triton-looped":
        force_looped_path(monkeypatch)
    return request.param.split("-")[0]


# ------------------------------------------------------------------------------ gradcheck
def _gradcheck(fn, m, n, fast_mode=False):
    """fast_mode checks random projections of the Jacobian: one numerical derivative per input
    instead of one per element, which the interpreter-run Triton kernels need to stay quick."""
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


@pytest.mark.parametrize("partial,eps_mode", RMS_VARIANTS)
def test_kernel_rms_gradcheck(partial, eps_mode, backend):
    _gradcheck(
        lambda x, w, b: rms_norm(x, w, EPS[eps_mode], partial=partial, eps_mode=eps_mode, backend=backend, bias=b),
        3, 40, fast_mode=backend == "triton",
    )


def test_kernel_ln_gradcheck(backend):
    _gradcheck(lambda x, w, b: layer_norm(x, w, b, backend=backend), 3, 40, fast_mode=backend == "triton")


# ------------------------------------------------------------------------------ per-channel affine
# affine_dim=-2: x is (B, C, L), one gain and offset per channel, applied inside the kernels (how
# ConvNorm runs conv maps). B != C, so a kernel that took the channel as r // B, or summed dw over
# the wrong rows, fails; L = 40 with k = 10 / 5 keeps the pRMSNorm prefix off the vector width.
def _channel_gradcheck(fn, b=3, c=2, n=40, fast_mode=False):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(b, c, n, dtype=torch.float64, generator=g, requires_grad=True)
    w = (1 + 0.3 * torch.randn(c, dtype=torch.float64, generator=g)).requires_grad_(True)
    bias = (0.3 * torch.randn(c, dtype=torch.float64, generator=g)).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x, w, bias), fast_mode=fast_mode)


@pytest.mark.parametrize("partial,eps_mode", RMS_VARIANTS)
def test_kernel_rms_per_channel_gradcheck(partial, eps_mode, backend):
    _channel_gradcheck(
        lambda x, w, b: rms_norm(x, w, EPS[eps_mode], partial=partial, eps_mode=eps_mode, backend=backend, bias=b,
                                 affine_dim=-2),
        fast_mode=backend == "triton",
    )


def test_kernel_ln_per_channel_gradcheck(backend):
    _channel_gradcheck(lambda x, w, b: layer_norm(x, w, b, backend=backend, affine_dim=-2), fast_mode=backend == "triton")


CHANNEL_CASES = [
    Case(op, 12, 41, dtype, weight, bias, 0.25 if op == "rms" else 1.0, mode, channels=3)
    for op, mode in (("rms", "inside"), ("rms", "outside"), ("ln", "inside"))
    for dtype in (torch.float32, torch.bfloat16) for weight, bias in (("fp32", True), ("x", False), ("none", True))
]


@pytest.mark.parametrize("case", CHANNEL_CASES, ids=str)
def test_per_channel_affine_matches_reference(case, backend):
    check_case(case, backend)


@pytest.mark.parametrize("op", ["rms", "ln"])
def test_per_channel_affine_on_strided_and_channels_last_input(op, backend):
    """A row-strided (B, C, L) view is read in place; a channels-last conv map reshaped to
    (B, C, H*W) is copied to logical order first, so row r is still channel r % C. The inputs
    are views of leaves, so the views themselves reach the kernels, and the gradient lands on
    the leaves."""
    wide = torch.randn(4, 3, 50)
    maps = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    views = {"strided": lambda t: t[:, :, :33], "channels-last": lambda t: t.reshape(2, 3, 20)}
    for base, view in ((wide, views["strided"]), (maps, views["channels-last"])):
        x = view(base)
        if view is views["strided"]:
            assert x.stride(1) == 50 and ops.as_rows(x).data_ptr() == x.data_ptr()  # read in place
        case = Case(op, x.shape[0] * x.shape[1], x.shape[-1], x.dtype, "fp32", True, 0.5, "outside", channels=3)
        w, b = torch.randn(3), torch.randn(3)
        leaves = [t.clone().requires_grad_(True) for t in (base, w, b)]
        refs = [t.clone().requires_grad_(True) for t in (base, w, b)]
        y = run_op(case, view(leaves[0]), *leaves[1:], backend=backend)
        y_ref = run_op(case, view(refs[0]), *refs[1:], backend="torch")
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        dy = torch.randn_like(y)
        y.backward(dy)
        y_ref.backward(dy)
        for a, r in zip(leaves, refs):
            torch.testing.assert_close(a.grad, r.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(0, 3, 16), (2, 0, 16)], ids=["no-samples", "no-channels"])
@pytest.mark.parametrize("op", ["rms", "ln"])
def test_per_channel_affine_on_empty_input(op, shape, backend):
    """No rows: an empty output and zero parameter gradients of C values, also for C = 0."""
    x = torch.empty(shape, requires_grad=True)
    w, b = torch.ones(shape[1], requires_grad=True), torch.zeros(shape[1], requires_grad=True)
    y = run_op(Case(op, 0, 16, torch.float32, "fp32", True, channels=max(shape[1], 1)), x, w, b, backend)
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape
    assert torch.equal(w.grad, torch.zeros(shape[1])) and torch.equal(b.grad, torch.zeros(shape[1]))


@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
def test_per_channel_all_zero_rows_are_finite(eps_mode, backend):
    x = torch.zeros(2, 3, 40)
    x[1, 2] = torch.randn(40)
    leaves = [x.clone().requires_grad_(True), torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)]
    y = run_op(Case("rms", 6, 40, torch.float32, "fp32", True, 0.25, eps_mode, channels=3), *leaves, backend)
    y.backward(torch.randn_like(y))
    for t in [y] + [leaf.grad for leaf in leaves]:
        assert torch.isfinite(t).all()


def test_per_channel_parameters_of_the_wrong_size_are_a_clear_error(backend):
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\) to match x's dim -2 \(affine_dim=-2\), got \(8,\)"):
        rms_norm(x, torch.ones(8), backend=backend, affine_dim=-2)
    with pytest.raises(ValueError, match=r"affine_dim must be one of \(-1, -2\), got 0"):
        layer_norm(x, backend=backend, affine_dim=0)
    with pytest.raises(ValueError, match=r"affine_dim=-2 needs x of shape \(..., C, L\), got shape \(8,\)"):
        layer_norm(torch.randn(8), backend=backend, affine_dim=-2)


# ------------------------------------------------------------------------------ partial statistic
def test_partial_one_is_rmsnorm_bit_for_bit(backend):
    x, w, _, dy = make_inputs(Case("rms", 5, 300, torch.bfloat16, "fp32", False))
    outs = []
    for kwargs in ({}, {"partial": 1.0}, {"partial": 1.0 - 1e-3}):  # floor(p * N) = N - 1 for the last
        leaf = x.clone().requires_grad_(True)
        y = rms_norm(leaf, w, backend=backend, **kwargs)
        y.backward(dy)
        outs.append((y, leaf.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], outs[2][0])  # k = N - 1 is a different statistic


def test_partial_statistic_ignores_the_tail(backend):
    """pRMSNorm's output depends on x[k:] only through those elements themselves."""
    x = torch.randn(4, 64)
    x2 = x.clone()
    x2[:, 8:] *= 100.0  # k = 8 for p = 0.125
    y, y2 = (rms_norm(t, partial=0.125, backend=backend) for t in (x, x2))
    torch.testing.assert_close(y[:, :8], y2[:, :8])
    torch.testing.assert_close(y2[:, 8:], 100.0 * y[:, 8:], rtol=1e-5, atol=1e-5)


def test_partial_k_is_exact_for_decimal_ratios(backend):
    """p = 0.29 on 100 features keeps 29 (0.29 * 100 is 28.999999999999996 in binary)."""
    assert reference.partial_size(100, 0.29) == 29
    assert reference.partial_size(3, 1 / 3) == 1
    assert reference.partial_size(100, 0.295) == 29  # still a floor away from integers
    x = torch.randn(3, 100, dtype=torch.float64)
    x[:, 28] = 50.0  # the 29th feature: inside the statistic only when k = 29
    expected = x * torch.rsqrt(x[:, :29].square().mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(rms_norm(x, partial=0.29, backend=backend), expected)


# ------------------------------------------------------------------------------ parameter layouts
PARAM_VIEWS = {
    "strided": lambda t: torch.stack([t, torch.full_like(t, 7.0)], -1).reshape(-1)[::2],
    "expanded": lambda t: t[:1].expand(t.shape[0]),
    "flipped-copy-of-view": lambda t: t.flip(0),
}


@pytest.mark.parametrize("view", sorted(PARAM_VIEWS))
@pytest.mark.parametrize("op", ["rms", "prms", "ln"])
def test_weight_and_bias_views_match_the_reference(backend, op, view):
    """A weight or bias that is a view (strided, expanded) gives the reference's output and
    gradients on every backend; on Triton a strided one once read the wrong elements."""
    n = 40
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, n, dtype=torch.float64, generator=g)
    base_w = (1 + 0.5 * torch.randn(n, dtype=torch.float64, generator=g)).requires_grad_(True)
    base_b = (0.5 * torch.randn(n, dtype=torch.float64, generator=g)).requires_grad_(True)
    dy = torch.randn(5, n, dtype=torch.float64, generator=g)

    def run(backend_name):
        xl = x.clone().requires_grad_(True)
        w, b = PARAM_VIEWS[view](base_w), PARAM_VIEWS[view](base_b)
        assert not (w.is_contiguous() and view != "flipped-copy-of-view")
        if op == "ln":
            y = layer_norm(xl, w, b, backend=backend_name)
        else:
            y = rms_norm(xl, w, partial=0.25 if op == "prms" else 1.0, bias=b, backend=backend_name)
        grads = torch.autograd.grad(y, (xl, base_w, base_b), dy)
        return (y, *grads)

    for got, want in zip(run(backend), run("torch")):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


# ------------------------------------------------------------------------------ layouts
def check_layout(x, op, backend, dy=None):
    n = x.shape[-1]
    w, b = torch.randn(n), torch.randn(n)
    case = Case(op, 0, n, x.dtype, "fp32", True, 0.5, "outside")
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    refs = [t.clone().requires_grad_(True) for t in (x, w, b)]
    y = run_op(case, *leaves, backend=backend)
    y_ref = run_op(case, *refs, backend="torch")
    assert y.shape == x.shape
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y) if dy is None else dy
    y.backward(dy)
    y_ref.backward(dy)
    for a, r in zip(leaves, refs):
        torch.testing.assert_close(a.grad, r.grad, atol=1e-4, rtol=1e-4)


def test_row_strided_input_is_read_in_place(backend):
    wide = torch.randn(6, 80)
    x = wide[:, :50]
    rows = ops.as_rows(x)
    assert rows.data_ptr() == x.data_ptr() and rows.stride(0) == 80  # the strided view, not a copy
    check_layout(x, "rms", backend)
    check_layout(x, "ln", backend)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(2, 3, 33),
        lambda: torch.randn(2, 3, 4, 33),
        lambda: torch.randn(2, 33, 5).transpose(1, 2),  # last dim not contiguous: copied
        lambda: torch.randn(4, 6, 40)[:, 1:5, :33],  # leading dims not collapsible: copied
        lambda: torch.randn(33),  # a single row
    ],
    ids=["3d", "4d", "transposed", "sliced-3d", "1d"],
)
@pytest.mark.parametrize("op", ["rms", "ln"])
def test_any_layout_matches_reference(make, op, backend):
    x = make()
    # a gradient whose rows are strided too: the backward reads it in place
    dy = torch.randn(*x.shape[:-1], x.shape[-1] + 7)[..., : x.shape[-1]]
    check_layout(x, op, backend, dy)


# ------------------------------------------------------------------------------ edge rows
@pytest.mark.parametrize("op,eps_mode", [("rms", "inside"), ("rms", "outside"), ("ln", "inside")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_zero_rows_are_finite(op, eps_mode, dtype, backend):
    x = torch.zeros(3, 40, dtype=dtype)
    x[1] = torch.randn(40)
    leaves = [x.clone().requires_grad_(True), torch.randn(40, requires_grad=True), torch.randn(40, requires_grad=True)]
    y = run_op(Case(op, 3, 40, dtype, "fp32", True, 0.25, eps_mode), *leaves, backend)
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
def test_tiny_rows_where_eps_placement_matters(eps_mode, dtype, backend):
    """Rows at 1e-7 scale: eps = 1e-8 inside vs outside the root give visibly different scales."""
    case = Case("rms", 4, 64, dtype, "x", True, 0.5, eps_mode)
    x, w, b, dy = make_inputs(case)
    x = 1e-7 * x
    got = [rms_norm(x, w, 1e-8, eps_mode=mode, partial=0.5, backend=backend) for mode in ("inside", "outside")]
    assert (got[0] - got[1]).abs().max() > 1e-3  # the modes are not interchangeable at this scale
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    refs = [t.double().requires_grad_(True) for t in (x, w, b)]
    y = rms_norm(leaves[0], leaves[1], 1e-8, eps_mode=eps_mode, partial=0.5, backend=backend, bias=leaves[2])
    y_ref = reference.rms_norm(refs[0], refs[1], refs[2], 1e-8, partial=0.5, eps_mode=eps_mode)
    y.backward(dy)
    y_ref.backward(dy.double())
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(y.double(), y_ref.detach(), rtol=rtol, atol=rtol)
    for a, r in zip(leaves, refs):  # dx is ~1e7: compare relative to its size
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=rtol, atol=rtol * r.grad.abs().max().item())


def test_empty_batch_gives_empty_outputs_and_zero_parameter_grads(backend):
    for op in ("rms", "ln"):
        x = torch.empty(0, 16, requires_grad=True)
        w = torch.ones(16, requires_grad=True)
        b = torch.zeros(16, requires_grad=True)
        y = run_op(Case(op, 0, 16, torch.float32, "fp32", True), x, w, b, backend)
        assert y.shape == (0, 16)
        y.sum().backward()
        assert x.grad.shape == (0, 16)
        assert torch.equal(w.grad, torch.zeros(16)) and torch.equal(b.grad, torch.zeros(16))


@pytest.mark.parametrize("op", ["rms", "ln"])
def test_parameter_grads_are_deterministic(op, backend):
    # the thread count only matters to the CPU kernels; the interpreter-run Triton ones just rerun
    counts = (None, None, 1, 3) if backend == "cpu" else (None, None)
    for channels in (0, 3):
        case = Case(op, 66 if channels else 67, 41, torch.float32, "fp32", True, 0.5, channels=channels)
        grads = parameter_grads_over_thread_counts(case, backend, counts)
        for other in grads[1:]:
            for a, b in zip(grads[0], other):
                assert torch.equal(a, b)


# ------------------------------------------------------------------------------ torch.compile
def test_compiles_fullgraph_with_autograd(backend, monkeypatch):
    if backend == "cpu":
        # as if this were the process's first use: the extension gets loaded while dynamo traces
        monkeypatch.setattr(cpu_kernels, "_ops", None)

    def f(x, w, b):
        y = layer_norm(rms_norm(x, w, partial=0.5, backend=backend) * 2, w, b, backend=backend)
        # and per channel: x as (1, 3, 32) with the first 3 parameters
        per_channel = layer_norm(rms_norm(x.view(1, 3, 32), w[:3], partial=0.5, backend=backend, affine_dim=-2),
                                 w[3:6], b[:3], backend=backend, affine_dim=-2)
        return y.sum() + per_channel.square().sum()

    x = torch.randn(3, 32, requires_grad=True)
    w = torch.randn(32, requires_grad=True)
    b = torch.randn(32, requires_grad=True)
    # inductor for the CPU kernels; the interpreter-run Triton kernels go through aot_eager (the
    # inductor test of the Triton ops needs a GPU: test_triton_kernels.py)
    compiled = torch.compile(f, fullgraph=True, backend="inductor" if backend == "cpu" else "aot_eager")
    compiled(x, w, b).backward()
    got = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    f(x, w, b).backward()
    for g, t in zip(got, (x, w, b)):
        torch.testing.assert_close(g, t.grad)


@pytest.mark.parametrize("eps_outside", [False, True])
def test_ops_pass_the_custom_op_checks(eps_outside, backend):
    """torch.library's opcheck: schema, fake (meta) impls and autograd registration agree."""
    x, w = torch.randn(3, 16), torch.randn(16)
    torch.library.opcheck(torch.ops.repro.rms_norm_fwd, (x, w, None, 1e-6, 8, eps_outside, 0, backend))
    torch.library.opcheck(torch.ops.repro.layer_norm_fwd, (x, w, torch.randn(16), 1e-5, 0, backend))
    # per channel: x (B, C, L) = (2, 3, 16), parameters of C = 3
    xc, wc, bc = torch.randn(2, 3, 16), torch.randn(3), torch.randn(3)
    torch.library.opcheck(torch.ops.repro.rms_norm_fwd, (xc, wc, bc, 1e-6, 8, eps_outside, 3, backend))
    torch.library.opcheck(torch.ops.repro.layer_norm_fwd, (xc, wc, bc, 1e-5, 3, backend))
