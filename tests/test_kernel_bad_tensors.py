"""Every backend under bad tensors: rows of NaN or Inf, all-zero rows and rows of 1e30 (whose
squares overflow fp32), each between two ordinary rows. The answer is the reference's, or the
documented one where the reference's autograd is the odd one out (docs/FAULTS.md):

- a NaN/Inf anywhere in a row's statistic makes that row's output NaN; its input gradient is NaN
  where the reference's is, and elsewhere the reference's value or NaN (Triton's pRMSNorm gives NaN
  past the prefix, the reference 0 -- moot, the row's output is NaN); dW/dB are NaN, as the
  reference's (they sum over rows). The ordinary rows are untouched.
- an all-zero row: y = bias; with eps outside the root, dx = g·dy/eps on the kernels (the
  derivative; torch's autograd of sqrt at 0 gives the reference NaN there).
- rows of 1e30: x² overflows the fp32 statistic, so y = 0 (+bias) on every backend, as in the
  reference; a constant 1e30 row in LayerNorm has a finite input gradient everywhere (0 where the
  mean rounds, rstd·(g·dy - mean(g·dy)) where it is exact: the C++ kernel).
- fp64 input on Triton: the right answer, in fp64.
"""
from __future__ import annotations

import pytest
import torch

from repro.kernels import layer_norm, rms_norm

N = 64
OPS = {
    "rms": dict(op="rms", eps=1e-6),
    "rms_outside": dict(op="rms", eps=1e-8, eps_mode="outside"),
    "prms": dict(op="rms", eps=1e-6, partial=0.25),
    "ln": dict(op="ln"),
}
ROWS = ("nan", "inf", "one_nan", "one_inf_in_tail", "zero", "big", "big_constant")
BACKENDS = ("cpu", "triton")


def bad_row(kind: str, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    big = 1e30 if dtype == torch.float32 else 6e4  # fp16: near its max (the statistic is fp32)
    row = torch.randn(N, generator=g)
    if kind == "nan":
        row[:] = float("nan")
    elif kind == "inf":
        row[:] = float("inf")
    elif kind == "one_nan":
        row[0] = float("nan")
    elif kind == "one_inf_in_tail":  # past pRMSNorm's prefix: its statistic stays finite
        row[-1] = float("inf")
    elif kind == "zero":
        row[:] = 0
    elif kind == "big":
        row = row * big
    elif kind == "big_constant":
        row[:] = big
    return row.to(dtype)


def inputs(kind: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    ordinary = torch.randn(2, N, generator=g).to(dtype)
    x = torch.stack([ordinary[0], bad_row(kind, dtype, g), ordinary[1]])
    w = (1 + 0.5 * torch.randn(N, generator=g)).to(dtype)
    b = (0.5 * torch.randn(N, generator=g)).to(dtype)
    dy = torch.randn(3, N, generator=g).to(dtype)
    return x, w, b, dy


def run(spec: dict, x, w, b, dy, backend: str):
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    if spec["op"] == "ln":
        y = layer_norm(*leaves, backend=backend)
    else:
        y = rms_norm(leaves[0], leaves[1], spec["eps"], partial=spec.get("partial", 1.0),
                     eps_mode=spec.get("eps_mode", "inside"), bias=leaves[2], backend=backend)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in leaves]


def close(got, want, dtype, mask=None):
    atol, rtol = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2)}[dtype]
    if mask is not None:
        got, want = got[mask], want[mask]
    torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol, equal_nan=True)


def check(op: str, kind: str, dtype: torch.dtype, backend: str, device: str = "cpu") -> None:
    spec = OPS[op]
    x, w, b, dy = inputs(kind, dtype)
    want = run(spec, x, w, b, dy, "torch")
    y, dx, dw, db = (t.cpu() for t in run(spec, *(t.to(device) for t in (x, w, b, dy)), backend))
    # The ordinary rows are untouched by their bad neighbour.
    ordinary = torch.tensor([0, 2])
    close(y[ordinary], want[0][ordinary], dtype)
    close(dx[ordinary], want[1][ordinary], dtype)
    close(y, want[0], dtype)  # the bad row's output is the reference's, NaN for NaN
    ref_dx = want[1][1]
    if kind == "zero" and spec.get("eps_mode") == "outside":
        assert ref_dx.isnan().all()  # the reference's autograd: sqrt'(0) = inf, times 0
        derivative = (w * dy[1]).double() / spec["eps"]
        if dtype == torch.float32:
            torch.testing.assert_close(dx[1].double(), derivative, rtol=1e-4, atol=0)
        else:  # 1e8-ish overflows fp16: the derivative's sign, at infinity
            assert dx[1].isinf().all() and torch.equal(dx[1].sign(), derivative.sign().to(dx.dtype))
        return
    if kind == "big_constant" and op == "ln":
        assert dx[1].isfinite().all()
        finite_w = True
    else:
        finite = ref_dx.isfinite()
        close(dx[1][~finite], ref_dx[~finite], dtype)  # NaN where the reference has NaN
        got_finite = dx[1][finite]
        # Documented: where the reference's gradient is finite in a non-finite row, a kernel may give NaN.
        agrees = got_finite.isnan() | torch.isclose(got_finite.double(), ref_dx[finite].double(), rtol=1e-2,
                                                   atol=1e-2)
        assert agrees.all(), (got_finite, ref_dx[finite])
        if want[0][1].isfinite().all():  # a finite row: exactly the reference's gradient
            close(dx[1], ref_dx, dtype)
        finite_w = False
    for got, ref in ((dw, want[2]), (db, want[3])):
        if finite_w:
            assert got.isfinite().all()
        else:
            assert torch.equal(got.isnan(), ref.isnan())
            close(got, ref, dtype, mask=~ref.isnan())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("kind", ROWS)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_rows_get_the_reference_or_the_documented_answer(backend, op, kind, dtype):
    check(op, kind, dtype, backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("kind", ROWS)
@pytest.mark.parametrize("op", list(OPS))
def test_gpu_bad_rows_get_the_reference_or_the_documented_answer(op, kind, dtype):
    check(op, kind, dtype, "triton", device="cuda")


@pytest.mark.parametrize("op", ["rms", "prms", "ln"])
def test_fp64_on_triton_gives_the_fp64_answer(op):
    spec = OPS[op]
    g = torch.Generator().manual_seed(1)
    x, dy = torch.randn(5, N, generator=g, dtype=torch.float64), torch.randn(5, N, generator=g, dtype=torch.float64)
    w, b = 1 + torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    got = run(spec, *(t.to(device) for t in (x, w, b, dy)), "triton")
    want = run(spec, x, w, b, dy, "torch")
    for g_, w_ in zip(got, want):
        assert g_.dtype == torch.float64
        torch.testing.assert_close(g_.cpu(), w_, atol=1e-10, rtol=1e-10)
