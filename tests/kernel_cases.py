"""Shared kernel-vs-reference checking for every kernel backend (Triton, C++ CPU).

A case runs one op through a backend and through the reference in fp64 (on the same inputs,
upcast), forward and every gradient, and compares with per-dtype tolerances: the kernels
accumulate in fp32 and round once to the output dtype, so errors are a few units in the last
place of that dtype (as Liger-Kernel and flash-attn test theirs).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from repro.kernels import layer_norm, reference, rms_norm
from repro.kernels.reference import partial_size

TOLERANCES = {  # (atol, rtol) for outputs and gradients
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

GRID_N = (1, 7, 41, 123, 1000, 1023, 1500, 4096)
GRID_M = (0, 1, 3, 67)
GRID_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GRID_PARTIALS = (0.0625, 0.125, 0.5, 1.0)
EPS = {"inside": 1e-6, "outside": 1e-8}


@dataclass(frozen=True)
class Case:
    op: str  # "rms" or "ln"
    m: int
    n: int
    dtype: torch.dtype
    weight: str  # "none", "fp32", "x" (the input's dtype)
    bias: bool
    partial: float = 1.0
    eps_mode: str = "inside"
    # > 0: the input is (m / channels, channels, n) and the weight and bias hold one value per
    # channel (the ops' affine_dim=-2, a conv map normalized over its positions)
    channels: int = 0

    def __str__(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        extra = f"-p{self.partial}-{self.eps_mode}" if self.op == "rms" else ""
        per_channel = f"-c{self.channels}" if self.channels else ""
        return f"{self.op}-{self.m}x{self.n}-{dt}-w{self.weight}-b{int(self.bias)}{extra}{per_channel}"

    @property
    def shape(self) -> tuple:
        return (self.m // self.channels, self.channels, self.n) if self.channels else (self.m, self.n)

    @property
    def params(self) -> int:
        return self.channels or self.n


def full_grid(ns=GRID_N, ms=GRID_M, dtypes=GRID_DTYPES):
    """Every combination (the slow suite)."""
    for n, m, dtype, weight, bias in itertools.product(ns, ms, dtypes, ("none", "fp32", "x"), (False, True)):
        yield Case("ln", m, n, dtype, weight, bias)
        for p, mode in itertools.product(GRID_PARTIALS, ("inside", "outside")):
            if partial_size(n, p) >= 1:
                yield Case("rms", m, n, dtype, weight, bias, p, mode)


def covering_grid(ns=GRID_N, ms=GRID_M, dtypes=GRID_DTYPES):
    """Every N x M x dtype once per op, the other options cycled so each value appears often."""
    options = list(itertools.product(("none", "fp32", "x"), (False, True), GRID_PARTIALS, ("inside", "outside")))
    for i, (n, m, dtype) in enumerate(itertools.product(ns, ms, dtypes)):
        weight, bias, p, mode = options[(i * 7) % len(options)]
        yield Case("ln", m, n, dtype, weight, bias)
        while partial_size(n, p) < 1:
            p = GRID_PARTIALS[GRID_PARTIALS.index(p) + 1]
        yield Case("rms", m, n, dtype, weight, bias, p, mode)


def make_inputs(case: Case, device="cpu", seed=0):
    # drawn on the device itself: a GPU draws 2 x 256M values in milliseconds, a CPU in seconds
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device)

    assert not case.channels or case.m % case.channels == 0, case
    x = randn(*case.shape).to(case.dtype)
    dy = randn(*case.shape).to(case.dtype)
    w_dtype = {"none": None, "fp32": torch.float32, "x": case.dtype}[case.weight]
    w = None if w_dtype is None else (1 + 0.5 * randn(case.params)).to(w_dtype)
    b = (0.5 * randn(case.params)).to(w_dtype or case.dtype) if case.bias else None
    return x, w, b, dy


def run_op(case: Case, x, w, b, backend: str):
    affine_dim = -2 if case.channels else -1
    if case.op == "ln":
        return layer_norm(x, w, b, backend=backend, affine_dim=affine_dim)
    return rms_norm(x, w, EPS[case.eps_mode], partial=case.partial, eps_mode=case.eps_mode, backend=backend, bias=b,
                    affine_dim=affine_dim)


def forward_backward(case: Case, x, w, b, dy, backend: str):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    y = run_op(case, *leaves, backend=backend)
    y.backward(dy)
    return [y.detach()] + [t.grad if t is not None else None for t in leaves]


def reference_fp64(case: Case, x, w, b, dy):
    up = [t.double() if t is not None else None for t in (x, w, b)]
    outs = forward_backward(case, *up, dy.double(), backend="torch")
    # round the fp64 results to the dtypes the kernel returns them in
    dtypes = [x.dtype, x.dtype, w.dtype if w is not None else None, b.dtype if b is not None else None]
    return [o.to(d) if o is not None else None for o, d in zip(outs, dtypes)]


def check_case(case: Case, backend: str, device="cpu"):
    x, w, b, dy = make_inputs(case, device)
    got = forward_backward(case, x, w, b, dy, backend)
    want = reference_fp64(case, x, w, b, dy)
    for name, g, r in zip(("y", "dx", "dw", "db"), got, want):
        if r is None:
            assert g is None, f"{case}: {name} should be None"
            continue
        assert g.dtype == r.dtype and g.shape == r.shape, f"{case}: {name} {g.dtype}{tuple(g.shape)}"
        # dW/dB sum over M rows: scale the tolerance with the number of rows summed
        scale = max(1.0, case.m ** 0.5) if name in ("dw", "db") else 1.0
        atol, rtol = TOLERANCES[r.dtype if name in ("dw", "db") else case.dtype]
        torch.testing.assert_close(
            g.double(), r.double(), atol=atol * scale, rtol=rtol, msg=lambda m: f"{case} {name}: {m}"
        )


def force_looped_path(monkeypatch) -> None:
    """Send the Triton kernels down their looped path (statistics kernel + column-chunk apply,
    per-row coefficients + column tiles in the backward) on small rows."""
    from repro.kernels.triton import _launch

    monkeypatch.setattr(_launch, "FUSED_FWD_N", 1)
    monkeypatch.setattr(_launch, "FUSED_BWD_N", 1)
    monkeypatch.setattr(_launch, "LOOP_BLOCK_N", 16)


def parameter_grads_over_thread_counts(case: Case, backend: str, counts=(None, None, 1, 3)) -> list:
    """[dx, dw, db] of one case, once per thread count (None: this process's count): for checking
    that gradients are bit-identical run to run and across thread counts."""
    x, w, b, dy = make_inputs(case)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n_threads in counts:
            torch.set_num_threads(n_threads or threads)
            leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
            run_op(case, *leaves, backend).backward(dy)
            grads.append([t.grad for t in leaves])
    finally:
        torch.set_num_threads(threads)
    return grads
