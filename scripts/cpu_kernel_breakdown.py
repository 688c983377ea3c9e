#!/usr/bin/env python
"""Where a CPU RMSNorm forward + backward spends its time, next to F.layer_norm's (issue 12).

    python scripts/cpu_kernel_breakdown.py                    # 4096 x 512, 2 threads, 300 rounds
    python scripts/cpu_kernel_breakdown.py --shape 4096x1024 --threads 2 --rounds 300

Prints, in ms (medians over rounds), with freed memory kept (repro.bench.timing.keep_freed_memory,
as scripts/cpu_kernel_ratios.py's "kept" mode):
  back to back   the C++ kernels alone, forward then backward, called in a loop of their own
                 (the input, gradient and output blocks stay in cache)
  interleaved    the same raw calls, our op through autograd (rms_norm(...).backward(): the C++
                 autograd node, the eager route on CPU), the same kernels through a Python
                 autograd.Function (the eager route before the C++ node, still the one on CUDA),
                 the same call through the torch.library.custom_op pair ("custom op": the
                 route torch.compile traces, and every eager call's before the fast route;
                 rms_norm with ops.EAGER_FAST_PATH off), and F.layer_norm's forward + backward,
                 taking turns call by call as scripts/cpu_kernel_ratios.py runs them (each evicts
                 the others' data)
  fixed cost     the four ops' forward + backward on a 2 x 8 input: the path around the kernels
                 (Python, autograd, custom-op dispatch), which does not grow with the input; what
                 kernels/ops.py's docstring says each route costs per call
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from repro.bench.paired import interleave, median_ms
from repro.bench.suite import parse_mxn
from repro.bench.timing import keep_freed_memory
from repro.kernels import cpu as cpu_kernels
from repro.kernels import ops, rms_norm


def shape(text: str) -> tuple[int, int]:
    try:
        return parse_mxn(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape must be MxN, e.g. 4096x512, got {text!r}") from None


def op_calls(m: int, n: int) -> dict:
    """Forward + backward callables on one (m, n) input: the raw kernels, our op by three routes,
    F.layer_norm."""
    x = torch.randn(m, n, requires_grad=True)
    w = (1 + 0.1 * torch.randn(n)).requires_grad_()
    b = (0.1 * torch.randn(n)).requires_grad_()
    dy = torch.randn(m, n)
    xd, wd = x.detach(), w.detach()

    def raw():
        _, rstd = cpu_kernels.rms_norm_forward(xd, wd, None, 1e-6, n, False)
        cpu_kernels.rms_norm_backward(dy, xd, wd, rstd, 1e-6, n, False, False)

    def ours():
        x.grad = w.grad = None
        rms_norm(x, w, 1e-6, backend="cpu").backward(dy)

    def python_function():
        x.grad = w.grad = None
        ops._RMSNormFunction.apply(x, w, None, 1e-6, n, False, 0, "cpu").backward(dy)

    def custom_op():
        x.grad = w.grad = None
        fast, ops.EAGER_FAST_PATH = ops.EAGER_FAST_PATH, False  # the same call, through the custom ops
        try:
            rms_norm(x, w, 1e-6, backend="cpu").backward(dy)
        finally:
            ops.EAGER_FAST_PATH = fast

    def theirs():
        x.grad = w.grad = b.grad = None
        F.layer_norm(x, (n,), w, b, 1e-5).backward(dy)

    return {"raw kernels": raw, "rms_norm op": ours, "Python Function": python_function, "custom op": custom_op,
            "F.layer_norm": theirs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=shape, default=(4096, 512), help="MxN (default 4096x512)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=300)
    args = p.parse_args(argv)
    if args.threads < 1 or args.rounds < 3:
        p.error("--threads must be >= 1 and --rounds >= 3")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not cpu_kernels.available():
        p.error(f"the C++ CPU kernels are unavailable: {cpu_kernels.build_error()}")
    m, n = args.shape
    calls = op_calls(m, n)
    alone = interleave({"raw kernels": calls["raw kernels"]}, args.rounds, warmup=5)["raw kernels"]
    mixed = interleave(calls, args.rounds, warmup=5)
    tiny = op_calls(2, 8)
    fixed = interleave({k: v for k, v in tiny.items() if k != "raw kernels"}, args.rounds, warmup=5)
    print(f"{m} x {n}, fp32, {args.threads} thread(s), build {cpu_kernels.build_capability()}, "
          f"{args.rounds} rounds, medians in ms")
    print(f"  back to back   raw kernels {median_ms(alone):.3f}")
    print("  interleaved    " + "  ".join(f"{k} {median_ms(v):.3f}" for k, v in mixed.items()))
    print("  fixed cost     " + "  ".join(f"{k} {median_ms(v):.3f}" for k, v in fixed.items()) + "  (2 x 8 input)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
