"""The norm ops under torch.autocast: the rule in repro.kernels.ops (autocast_inputs) makes every
norm run at the precision F.layer_norm runs at on that device, with fp32 statistics, on every
backend, eager and compiled. The CUDA policy (cast to fp32) is checked here by applying it to the
CPU (AUTOCAST_FP32_DEVICES patched); tests/test_gpu.py checks it against F.layer_norm on CUDA."""
from __future__ import annotations

import functools
import json

import pytest
import torch
import torch.nn.functional as F

from repro import kernels
from repro.kernels import ops, reference
from repro.nn import ConvNorm, L2Norm, LayerNorm, NormLayer, RMSNorm
from repro.tasks import build_task_and_model
from repro.train import train
from train_helpers import cifar_jpeg, one_thread, smoke_config  # noqa: F401

BACKENDS = ["cpu", "torch", "triton"]  # triton runs under TRITON_INTERPRET=1 (set by the suite)
OPS = {
    "layer_norm": (functools.partial(kernels.layer_norm), reference.layer_norm),
    "rms_norm": (functools.partial(kernels.rms_norm), reference.rms_norm),
    "prms_outside": (functools.partial(kernels.rms_norm, partial=0.25, eps_mode="outside"),
                     functools.partial(reference.rms_norm, partial=0.25, eps_mode="outside", eps=1e-6)),
}


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 40, generator=g) * 3 + 1).to(dtype)
    w = torch.rand(40, generator=g) + 0.5
    b = torch.randn(40, generator=g)
    return x, w, b


def _call(name, x, w, b, backend):
    op, _ = OPS[name]
    return op(x, w, bias=b, backend=backend) if name == "layer_norm" else op(x, w, backend=backend, bias=b)


def _expected(name, x, w, b, out_dtype):
    """The fp64 reference of the op's math, rounded once to the output dtype: what fp32 statistics give."""
    _, ref = OPS[name]
    return ref(x.double(), w.double(), b.double()).to(out_dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cpu_autocast_matches_f_layer_norm_dtype(name, backend, dtype):
    """CPU bf16 autocast: the output dtype is F.layer_norm's under the same autocast, and the
    values are the fp32-statistics result (one rounding to the output dtype)."""
    x, w, b = _inputs(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _call(name, x, w, b, backend)
        torch_dtype = F.layer_norm(x, (40,), w, b).dtype
    assert y.dtype == torch_dtype == dtype
    tol = dict(atol=2e-2, rtol=1.6e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, _expected(name, x, w, b, dtype), **tol)


@pytest.fixture
def fp32_policy_on_cpu(monkeypatch):
    """The CUDA rule (layer_norm is an fp32 autocast op there) applied to CPU tensors."""
    monkeypatch.setattr(ops, "AUTOCAST_FP32_DEVICES", ("cpu",))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", OPS)
def test_fp32_policy_casts_in_and_returns_fp32(fp32_policy_on_cpu, name, backend):
    x, w, b = _inputs(torch.bfloat16)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _call(name, x, w, b, backend)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, _expected(name, x.detach(), w, b, torch.float32), atol=1e-5, rtol=1e-5)
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16  # autograd brings the gradient back to the input's dtype
    # outside autocast nothing is cast
    assert _call(name, x.detach(), w, b, backend).dtype == torch.bfloat16


def _layers():
    return {
        "rmsnorm": RMSNorm(40),
        "prmsnorm": RMSNorm(40, partial=0.25),
        "layernorm": LayerNorm(40),
        "l2norm": L2Norm(40),
        "conv_rms": ConvNorm(3, functools.partial(kernels.rms_norm, partial=0.5)),
    }


def _layer_input(name):
    g = torch.Generator().manual_seed(1)
    shape = (2, 3, 4, 4) if name.startswith("conv") else (6, 40)
    return torch.randn(*shape, generator=g).bfloat16()


@pytest.mark.parametrize("policy", ["cpu", "fp32"])
@pytest.mark.parametrize("name", list(_layers()))
def test_layers_under_compile_follow_the_rule(monkeypatch, policy, name):
    """torch.compile (aot_eager: the traced graph with the custom ops as nodes) gives the eager
    result and dtype under autocast, for both policies."""
    if policy == "fp32":
        monkeypatch.setattr(ops, "AUTOCAST_FP32_DEVICES", ("cpu",))
    layer, x = _layers()[name], _layer_input(name)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager, traced = layer(x), compiled(x)
    want = torch.float32 if policy == "fp32" else torch.bfloat16
    assert eager.dtype == traced.dtype == want
    torch.testing.assert_close(traced, eager)


@pytest.mark.parametrize("precision,policy,ran_at", [
    ("fp32", "cpu", "float32->float32"),
    ("bf16", "cpu", "bfloat16->bfloat16"),
    ("bf16", "fp32", "bfloat16->float32"),  # the CUDA rule, applied to the CPU
])
def test_run_summary_records_the_precision_each_norm_ran_at(cifar_jpeg, tmp_path, monkeypatch, precision, policy, ran_at):
    if policy == "fp32":
        monkeypatch.setattr(ops, "AUTOCAST_FP32_DEVICES", ("cpu",))
    cfg = smoke_config(cifar_jpeg, "norm=rmsnorm", f"trainer.precision={precision}", "trainer.max_steps=1",
                       "trainer.eval_every=1")
    summary = train(cfg, tmp_path)
    stored = json.loads((tmp_path / "summary.json").read_text())
    model = build_task_and_model(cfg)[1]
    norm_layers = [name for name, m in model.named_modules() if isinstance(m, NormLayer)]
    assert stored["precision"] == precision and len(norm_layers) > 2
    assert stored["norm_precision"] == summary["norm_precision"] == {name: ran_at for name in norm_layers}
