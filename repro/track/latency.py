"""Per-step norm latency inside real training: forward and backward time of every norm layer.

Every `every` steps the timer hooks each `repro.nn.NormLayer` for one step (forward pre/post hooks,
full backward pre/post hooks) and sums the time between them: CUDA events on GPU, a monotonic
clock on CPU. Between sampled steps no hook is attached, so they run at full speed. The backward
time is the span from the gradient reaching a norm's output to its input gradient being ready,
which is the norm's own backward as long as autograd runs no unrelated node in between (true for
the sequential CNN; close for pre-norm transformer blocks). Weight norm is a reparameterization,
not a NormLayer, so it times as zero.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch import nn

from repro.nn import NormLayer


class _CpuClock:
    def __init__(self):
        self.now = time.perf_counter

    def elapsed_ms(self, start, end) -> float:
        return (end - start) * 1e3


class _CudaClock:
    def now(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_ms(self, start, end) -> float:
        return start.elapsed_time(end)


class NormTimer:
    def __init__(self, model: nn.Module, every: int, device: torch.device):
        self.layers = [m for m in model.modules() if isinstance(m, NormLayer)]
        self.every = every
        self.clock = _CudaClock() if device.type == "cuda" else _CpuClock()

    def due(self, step: int) -> bool:
        return self.every > 0 and bool(self.layers) and step % self.every == 0

    @contextmanager
    def measure(self):
        """Time the norms of the forward+backward run inside the block; afterwards `result()`
        gives {"time/norm_fwd_ms", "time/norm_bwd_ms"} summed over all norm layers."""
        spans = {"fwd": [], "bwd": []}
        starts = {}

        def start(kind):
            def hook(module, *_):
                starts[(kind, id(module))] = self.clock.now()
            return hook

        def stop(kind):
            def hook(module, *_):
                spans[kind].append((starts.pop((kind, id(module))), self.clock.now()))
            return hook

        handles = []
        for layer in self.layers:
            handles += [
                layer.register_forward_pre_hook(start("fwd")),
                layer.register_forward_hook(stop("fwd")),
                layer.register_full_backward_pre_hook(start("bwd")),
                layer.register_full_backward_hook(stop("bwd")),
            ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        self._spans = spans

    def result(self) -> dict[str, float]:
        """Call after the step's work is complete (on CUDA: after a synchronize)."""
        return {
            f"time/norm_{kind}_ms": sum(self.clock.elapsed_ms(a, b) for a, b in spans)
            for kind, spans in self._spans.items()
        }
