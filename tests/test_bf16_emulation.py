"""bf16 autocast emulated in fp32 on CPUs without oneDNN bf16 (repro.train.bf16_emulation): the
same rounding points as a bf16 op, through autograd, and nothing left behind after the block."""
import pytest
import torch
import torch.nn.functional as F

from repro.train.bf16_emulation import EMULATED_OPS, bf16_route, emulate_bf16_autocast


def bf16(t):
    return t.to(torch.bfloat16).float()


def conv_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, 9, 9, generator=g, requires_grad=True)
    w = torch.randn(8, 6, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(8, generator=g, requires_grad=True)
    dy = torch.randn(4, 8, 9, 9, generator=g)
    return x, w, b, dy


def autocast_conv(x, w, b, dy):
    for t in (x, w, b):
        t.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = F.conv2d(x, w, b, padding=1)
    y.backward(dy.to(y.dtype))
    return [y, x.grad, w.grad, b.grad]


def test_emulated_conv_is_fp32_on_bf16_rounded_operands_with_bf16_output():
    """Forward: bf16(conv_fp32(bf16(x), bf16(w), bf16(b))), bit for bit. Backward: the gradients
    bf16 autocast gives (bf16 grad_input, a weight gradient rounded to bf16 and widened to the
    fp32 parameter), from fp32 convolutions on the bf16 values."""
    x, w, b, dy = conv_case()
    with emulate_bf16_autocast():
        y, dx, dw, db = autocast_conv(x, w, b, dy)
    xr, wr, br = (bf16(t.detach()).requires_grad_() for t in (x, w, b))
    want = F.conv2d(xr, wr, br, padding=1)
    want.backward(bf16(dy))
    assert y.dtype == torch.bfloat16 and torch.equal(y, want.to(torch.bfloat16))
    assert dx.dtype == torch.float32 and torch.equal(dx, bf16(xr.grad))
    assert dw.dtype == torch.float32 and torch.equal(dw, bf16(wr.grad))
    assert torch.equal(db, bf16(br.grad))


def test_emulation_is_the_exact_result_rounded_once_to_bf16():
    """Against fp64 on the same bf16 operands, each output and gradient is off by its final bf16
    rounding alone (half a step, at most 2^-8 relative), as a bf16 kernel that sums in fp32 gives. (torch's
    own bf16 route on an AVX2-only CPU, ATen's _slow_conv2d, was off by up to 4x that in grad_input,
    measured 2026-11-30.)"""
    x, w, b, dy = conv_case(1)
    with emulate_bf16_autocast():
        got = autocast_conv(x, w, b, dy)
    exact_in = [bf16(t.detach()).double().requires_grad_() for t in (x, w, b)]
    exact = F.conv2d(*exact_in, padding=1)
    exact.backward(bf16(dy).double())
    for g, e in zip(got, [exact] + [t.grad for t in exact_in]):
        assert ((g.double() - e).abs() <= 2 ** -8 * e.abs() + 1e-5 * e.abs().max()).all()


def test_the_block_leaves_torchs_route_as_it_was_and_nests():
    x, w, b, dy = conv_case(2)
    before = autocast_conv(x, w, b, dy)
    with emulate_bf16_autocast() as outer:
        with emulate_bf16_autocast() as inner:
            assert outer and inner
        inside = autocast_conv(x, w, b, dy)  # still emulated after the inner block
    after = autocast_conv(x, w, b, dy)
    assert all(torch.equal(a, c) for a, c in zip(before, after))
    xr = bf16(x.detach())
    assert torch.equal(inside[0], F.conv2d(xr, bf16(w.detach()), bf16(b.detach()), padding=1).to(torch.bfloat16))
    with emulate_bf16_autocast(enabled=False) as on:
        assert not on
        assert torch.equal(autocast_conv(x, w, b, dy)[0], before[0])


@pytest.mark.parametrize("op", ["linear", "matmul", "bmm", "addmm"])
def test_matrix_products_are_emulated_too(op):
    g = torch.Generator().manual_seed(3)
    a, m, c = (torch.randn(2, 5, 7, generator=g), torch.randn(2, 7, 3, generator=g), torch.randn(5, 3, generator=g))
    calls = {
        "linear": (lambda: F.linear(a[0], m[0].T, c[0, :3]), lambda: F.linear(bf16(a[0]), bf16(m[0].T), bf16(c[0, :3]))),
        "matmul": (lambda: a @ m, lambda: bf16(a) @ bf16(m)),
        "bmm": (lambda: torch.bmm(a, m), lambda: torch.bmm(bf16(a), bf16(m))),
        "addmm": (lambda: torch.addmm(c, a[0], m[0]), lambda: torch.addmm(bf16(c), bf16(a[0]), bf16(m[0]))),
    }
    run, want = calls[op]
    with emulate_bf16_autocast(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = run()
    assert got.dtype == torch.bfloat16 and torch.equal(got, want().to(torch.bfloat16))


def test_fp64_and_autocast_off_are_untouched():
    x, w, b, _ = conv_case(4)
    with emulate_bf16_autocast():
        plain = F.conv2d(x, w, b)  # autocast off: fp32 as ever
        with torch.autocast("cpu", dtype=torch.bfloat16):
            double = F.conv2d(x.double(), w.double(), b.double())
    assert plain.dtype == torch.float32 and torch.equal(plain, F.conv2d(x, w, b))
    assert double.dtype == torch.float64


def test_every_listed_op_exists_and_the_route_is_a_known_one():
    for name in EMULATED_OPS:
        op, _, overload = name.partition(".")
        assert hasattr(getattr(torch.ops.aten, op), overload or "default"), name
    assert bf16_route(torch.device("cpu")) in ("native", "emulated")
    assert bf16_route(torch.device("meta")) == "native"
