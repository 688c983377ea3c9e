"""Tests of the norm modules and the factory (repro.nn) against the references and torch.

The kernels themselves are tested elsewhere; here the torch backend checks the wiring: arguments,
defaults, conv adapters, parameters, gradients, weight norm and norm-layer discovery.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import repro.nn as rn
from repro.kernels import reference

torch.manual_seed(0)
DIM = 32
CONV_SHAPE = (2, 6, 5, 4)  # H*W = 20, so partial=0.125 keeps k = 2 positions
ROW_NORMS = ("layernorm", "rmsnorm", "prmsnorm", "l2norm")


def randomize_parameters(module: nn.Module) -> nn.Module:
    # ones/zeros would hide a gain or offset applied on the wrong axis
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


def reference_rows(name: str, rows, weight=None, bias=None, partial=0.125, eps=None):
    """The reference row op of a norm, the same math the factory's options select."""
    if name == "layernorm":
        return reference.layer_norm(rows, weight, bias, eps=eps or 1e-5)
    if name == "l2norm":
        return _affine(F.normalize(rows, dim=-1, eps=eps or 1e-8), weight, bias)
    return reference.rms_norm(
        rows, weight, bias, eps=eps or 1e-6, partial=partial if name == "prmsnorm" else 1.0
    )


def _affine(y, weight, bias):
    y = y * weight if weight is not None else y
    return y + bias if bias is not None else y


# ---------------------------------------------------------------------------- modules
@pytest.mark.parametrize("eps_mode", ["inside", "outside"])
@pytest.mark.parametrize("partial", [1.0, 0.25, 0.0625])
@pytest.mark.parametrize("bias", [False, True])
def test_rmsnorm_matches_reference(eps_mode, partial, bias):
    norm = rn.RMSNorm(DIM, partial=partial, eps_mode=eps_mode, bias=bias, backend="torch")
    randomize_parameters(norm)
    x = torch.randn(3, 5, DIM)
    expected = reference.rms_norm(
        x, norm.weight, norm.bias, eps=norm.eps, partial=partial, eps_mode=eps_mode
    )
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=0)
    assert (norm.bias is not None) == bias


def test_rmsnorm_inside_matches_torch_rms_norm():
    norm = randomize_parameters(rn.RMSNorm(DIM, backend="torch"))
    x = torch.randn(4, 3, DIM)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (DIM,), norm.weight, eps=1e-6))


def test_rmsnorm_outside_eps_is_added_to_the_root():
    # Tiny rows make eps placement visible: 1/(rms + eps) differs from rsqrt(ms + eps).
    x = torch.full((1, DIM), 1e-4)
    outside = rn.RMSNorm(DIM, 1e-4, eps_mode="outside", affine=False, backend="torch")(x)
    torch.testing.assert_close(outside, x / (1e-4 + 1e-4))


def test_layernorm_matches_torch_layernorm():
    ours = randomize_parameters(rn.LayerNorm(DIM, backend="torch"))
    theirs = nn.LayerNorm(DIM)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 7, DIM) * 3 + 1
    torch.testing.assert_close(ours(x), theirs(x))


def test_prmsnorm_with_partial_one_is_rmsnorm():
    x = torch.randn(6, DIM)
    full = rn.RMSNorm(DIM, backend="torch")
    partial = rn.PartialRMSNorm(DIM, partial=1.0, backend="torch")
    assert torch.equal(partial(x), full(x))
    assert rn.PartialRMSNorm(DIM).partial == 0.0625


def test_prmsnorm_statistic_ignores_features_past_k():
    norm = rn.PartialRMSNorm(DIM, partial=0.25, backend="torch")
    x = torch.randn(2, DIM)
    scaled_tail = x.clone()
    scaled_tail[:, DIM // 4:] *= 10
    # the statistic comes from x[:, :8] only: scaling the tail scales its outputs, nothing else
    torch.testing.assert_close(norm(scaled_tail)[:, : DIM // 4], norm(x)[:, : DIM // 4])
    torch.testing.assert_close(norm(scaled_tail)[:, DIM // 4:], 10 * norm(x)[:, DIM // 4:])


@pytest.mark.parametrize("eps_mode, eps", [("inside", 1e-6), ("outside", 1e-8)])
def test_rmsnorm_default_eps_follows_eps_mode(eps_mode, eps):
    assert rn.RMSNorm(DIM, eps_mode=eps_mode).eps == eps
    assert rn.NormFactory("rmsnorm", eps_mode=eps_mode).eps == eps
    assert rn.RMSNorm(DIM, 1e-3, eps_mode=eps_mode).eps == 1e-3


def test_parameters_start_as_identity_affine():
    norm = rn.RMSNorm(DIM, bias=True)
    assert torch.equal(norm.weight, torch.ones(DIM)) and torch.equal(norm.bias, torch.zeros(DIM))
    assert rn.RMSNorm(DIM, affine=False).weight is None
    assert not list(rn.LayerNorm(DIM, affine=False).parameters())


def test_extra_repr_names_the_configuration():
    text = repr(rn.RMSNorm(DIM, partial=0.5, eps_mode="outside"))
    for part in (str(DIM), "eps=1e-08", "partial=0.5", "eps_mode='outside'"):
        assert part in text


def test_l2norm_divides_by_the_clamped_norm():
    norm = randomize_parameters(rn.L2Norm(DIM))
    x = torch.randn(3, DIM)
    x[0] = 0.0
    y = norm(x)
    torch.testing.assert_close(y[1:], x[1:] / x[1:].norm(dim=-1, keepdim=True) * norm.weight)
    assert torch.equal(y[0], torch.zeros(DIM))


def test_batchnorm_features_last_matches_batchnorm1d_on_flattened_rows():
    ours, theirs = rn.BatchNorm(DIM), nn.BatchNorm1d(DIM)
    randomize_parameters(ours)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 4, DIM)
    torch.testing.assert_close(ours(x), theirs(x.reshape(-1, DIM)).view(x.shape))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)


# ---------------------------------------------------------------------------- conv adapter
@pytest.mark.parametrize("name", ROW_NORMS)
def test_conv_spatial_mode_normalizes_each_channel_map(name):
    partial = 0.125 if name == "prmsnorm" else None
    norm = rn.build_norm(name, CONV_SHAPE[1], conv=True, backend="torch", partial=partial)
    randomize_parameters(norm)
    n, c, h, w = CONV_SHAPE
    x = torch.randn(CONV_SHAPE)
    rows = reference_rows(name, x.reshape(n * c, h * w)).view(CONV_SHAPE)
    expected = rows * norm.weight.view(c, 1, 1) + norm.bias.view(c, 1, 1)
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("name", ROW_NORMS)
def test_conv_channel_mode_normalizes_each_position_over_channels(name):
    c = CONV_SHAPE[1]
    partial = 0.5 if name == "prmsnorm" else None
    norm = rn.build_norm(name, c, conv=True, conv_mode="channel", backend="torch", partial=partial)
    randomize_parameters(norm)
    x = torch.randn(CONV_SHAPE)
    rows = x.permute(0, 2, 3, 1)
    expected = reference_rows(name, rows, norm.weight, norm.bias, partial=0.5).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("name", ["layernorm", "rmsnorm", "prmsnorm"])
def test_conv_spatial_mode_fuses_the_channel_affine_with_the_same_results(name, backend):
    """The kernel norms take the per-channel gain and bias into their kernels (affine_dim=-2);
    the result is what the unfused route (normalize the rows, then the affine in torch) gives."""
    partial = 0.125 if name == "prmsnorm" else None
    fused = randomize_parameters(rn.build_norm(name, CONV_SHAPE[1], conv=True, backend=backend, partial=partial))
    assert fused.fused_affine and rn.registry.norm_spec(name).fuses_channel_affine
    unfused = rn.ConvNorm(fused.channels, fused.normalize, fused_affine=False)
    unfused.load_state_dict(fused.state_dict())
    x = torch.randn(CONV_SHAPE, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(CONV_SHAPE, dtype=torch.float64)

    def output_and_grads(norm):
        norm = norm.double()
        y = norm(x)
        return (y, *torch.autograd.grad(y, (x, norm.weight, norm.bias), dy))

    for got, want in zip(output_and_grads(fused), output_and_grads(unfused)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_norms_without_a_per_channel_op_stay_unfused():
    assert not rn.build_norm("l2norm", 6, conv=True).fused_affine


def test_conv_adapter_rejects_features_of_the_wrong_shape():
    norm = rn.build_norm("rmsnorm", 6, conv=True)
    with pytest.raises(ValueError, match=r"\(N, 6, H, W\)"):
        norm(torch.randn(2, 5, 3, 3))


def test_conv_adapter_without_affine_has_no_parameters():
    norm = rn.build_norm("layernorm", 6, conv=True, affine=False)
    x = torch.randn(CONV_SHAPE)
    assert not list(norm.parameters())
    torch.testing.assert_close(norm(x), reference.layer_norm(x.reshape(12, 20)).view(CONV_SHAPE))


# ---------------------------------------------------------------------------- factory
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("name", rn.NORM_NAMES)
def test_factory_builds_every_norm_and_gradients_flow(name, conv):
    norm = rn.NormFactory(name, backend="torch")(6 if conv else DIM, conv=conv)
    x = torch.randn(CONV_SHAPE if conv else (3, 4, DIM), requires_grad=True)
    y = norm(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    params = dict(norm.named_parameters())
    assert (name in ("none", "weightnorm")) == (not params)
    for pname, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert isinstance(norm, rn.NormLayer) == (name not in ("none", "weightnorm"))


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("name", rn.NORM_NAMES)
def test_low_precision_input_keeps_its_dtype_with_fp32_parameters(name, conv):
    norm = rn.build_norm(name, 16, conv=conv, backend="torch")
    x = torch.randn((2, 16, 4, 4) if conv else (3, 16), dtype=torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("conv", [False, True])
def test_norms_compile_fullgraph_across_settings(conv):
    # A sweep compiles one module class with several eps/partial values in one process; after the
    # first, dynamo traces the changed floats symbolically, so the ops' checks must trace too.
    settings = [("rmsnorm", 1e-6, None), ("prmsnorm", 1e-5, 0.25), ("layernorm", 1e-4, None)]
    for name, eps, partial in settings:
        norm = rn.build_norm(name, 16, conv=conv, eps=eps, partial=partial, backend="torch")
        randomize_parameters(norm)
        x = torch.randn((2, 16, 4, 4) if conv else (3, 16))
        torch.testing.assert_close(torch.compile(norm, fullgraph=True)(x), norm(x))


@pytest.mark.parametrize("name", rn.NORM_NAMES)
def test_build_norm_is_the_factory(name):
    options = dict(conv=True, conv_mode="channel", affine=False)
    built = rn.build_norm(name, 16, **options)
    made = rn.NormFactory(name, conv_mode="channel", affine=False)(16, conv=True)
    assert type(built) is type(made) and repr(built) == repr(made)


def test_factory_options_reach_the_modules():
    options = dict(eps=1e-4, partial=0.25, eps_mode="outside", backend="torch")
    factory = rn.NormFactory("prmsnorm", **options)
    norm = factory(DIM)
    assert isinstance(norm, rn.PartialRMSNorm)
    assert (norm.eps, norm.partial, norm.eps_mode, norm.backend) == (1e-4, 0.25, "outside", "torch")
    assert rn.NormFactory("prmsnorm").partial == 0.0625
    assert rn.NormFactory("rmsnorm", partial=1.0)(DIM).partial == 1.0
    assert rn.NormFactory("batchnorm", eps=1e-3)(DIM, conv=True).eps == 1e-3


def test_weightnorm_wrap_reparameterizes_linear_and_conv():
    factory = rn.NormFactory("weightnorm")
    cases = ((nn.Linear(5, 4), torch.randn(3, 5)), (nn.Conv2d(3, 4, 3), torch.randn(2, 3, 6, 6)))
    for layer, x in cases:
        before = layer(x).detach()
        wrapped = factory.wrap(layer)
        names = dict(wrapped.named_parameters())
        assert "parametrizations.weight.original0" in names  # g, one per output unit
        assert names["parametrizations.weight.original0"].numel() == 4
        torch.testing.assert_close(wrapped(x), before)  # g starts at ||v||: same function


@pytest.mark.parametrize("name", [n for n in rn.NORM_NAMES if n != "weightnorm"])
def test_wrap_leaves_the_layer_alone_for_other_norms(name):
    layer = nn.Linear(5, 4)
    assert rn.NormFactory(name).wrap(layer) is layer
    assert not hasattr(layer, "parametrizations")


class TinyNet(nn.Module):
    """Two conv norms, one features-last norm and a wrapped layer: what models do with a factory."""

    def __init__(self, factory: rn.NormFactory):
        super().__init__()
        self.conv = factory.wrap(nn.Conv2d(3, 6, 3, padding=1))
        self.conv_norms = nn.ModuleList([factory(6, conv=True) for _ in range(2)])
        self.head = factory.wrap(nn.Linear(6, DIM))
        self.head_norm = factory(DIM)

    def forward(self, x):
        x = self.conv(x)
        for norm in self.conv_norms:
            x = torch.relu(norm(x))
        return self.head_norm(self.head(x.mean(dim=(2, 3))))


@pytest.mark.parametrize("name", rn.NORM_NAMES)
def test_norm_layers_are_found_once_each(name):
    expected = 0 if name in ("none", "weightnorm") else 3
    model = TinyNet(rn.NormFactory(name, backend="torch"))
    found = [m for m in model.modules() if isinstance(m, rn.NormLayer)]
    assert len(found) == expected
    model(torch.randn(2, 3, 8, 8)).sum().backward()


# ---------------------------------------------------------------------------- bad arguments
BAD_MODULE_ARGS = [
    (rn.RMSNorm, (0,), {}, "dim"),
    (rn.RMSNorm, (3.0,), {}, "dim"),
    (rn.RMSNorm, (True,), {}, "dim"),
    (rn.RMSNorm, (DIM, 0.0), {}, "eps"),
    (rn.RMSNorm, (DIM, float("nan")), {}, "eps"),
    (rn.RMSNorm, (DIM,), {"partial": 0.0}, "partial"),
    (rn.RMSNorm, (DIM,), {"partial": 1.5}, "partial"),
    (rn.RMSNorm, (DIM,), {"partial": 0.01}, "partial"),  # k = floor(0.32) = 0
    (rn.RMSNorm, (DIM,), {"eps_mode": "middle"}, "eps_mode"),
    (rn.RMSNorm, (DIM,), {"backend": "cuda"}, "backend"),
    (rn.RMSNorm, (DIM,), {"affine": "yes"}, "affine"),
    (rn.RMSNorm, (DIM,), {"bias": 1}, "bias"),
    (rn.PartialRMSNorm, (8,), {}, "partial"),  # default 0.0625 of 8 features keeps none
    (rn.LayerNorm, (-1,), {}, "dim"),
    (rn.LayerNorm, (DIM, -1e-5), {}, "eps"),
    (rn.LayerNorm, (DIM,), {"backend": "jax"}, "backend"),
    (rn.L2Norm, (DIM, 0), {}, "eps"),
    (rn.L2Norm, (None,), {}, "dim"),
    (rn.BatchNorm, (0,), {}, "dim"),
    (rn.BatchNorm2d, (DIM, float("inf")), {}, "eps"),
    (rn.ConvNorm, (0, reference.layer_norm), {}, "channels"),
    (rn.ConvNorm, (4, reference.layer_norm), {"mode": "depth"}, "conv_mode"),
    (rn.ConvNorm, (4, reference.layer_norm), {"fused_affine": 1}, "fused_affine"),
    (rn.NormFactory, ("groupnorm",), {}, "norm"),
    (rn.NormFactory, ("rmsnorm",), {"partial": 0.5}, "prmsnorm"),
    (rn.NormFactory, ("layernorm",), {"partial": 0.5}, "partial"),
    (rn.NormFactory, ("prmsnorm",), {"partial": 2.0}, "partial"),
    (rn.NormFactory, ("layernorm",), {"eps_mode": "outside"}, "eps_mode"),
    (rn.NormFactory, ("none",), {"eps": 1e-5}, "eps"),
    (rn.NormFactory, ("rmsnorm",), {"eps": -1.0}, "eps"),
    (rn.NormFactory, ("rmsnorm",), {"eps_mode": "above"}, "eps_mode"),
    (rn.NormFactory, ("rmsnorm",), {"backend": "numpy"}, "backend"),
    (rn.NormFactory, ("rmsnorm",), {"conv_mode": "depth"}, "conv_mode"),
    (rn.NormFactory, ("rmsnorm",), {"affine": None}, "affine"),
    (rn.build_norm, ("layernorm", 0), {}, "dim"),
    (rn.build_norm, ("layernorm", DIM), {"conv": "yes"}, "conv"),
    (rn.build_norm, ("prmsnorm", 8), {}, "partial"),
]


@pytest.mark.parametrize(
    "target, args, kwargs, argument", BAD_MODULE_ARGS,
    ids=[f"{t.__name__}-{a}-{i}" for i, (t, _, _, a) in enumerate(BAD_MODULE_ARGS)],
)
def test_bad_arguments_raise_value_error_naming_the_argument(target, args, kwargs, argument):
    with pytest.raises(ValueError, match=argument) as info:
        target(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_wrap_rejects_layers_without_output_unit_weights():
    with pytest.raises(ValueError, match="layer must be one of"):
        rn.NormFactory("layernorm").wrap(nn.Embedding(4, 3))


# ---------------------------------------------------------------------------- triton backend
TRITON_BACKEND = Path(__file__).parents[1] / "kernels" / "triton" / "backend.py"


@pytest.mark.skipif(not TRITON_BACKEND.exists(), reason="kernels/triton/backend.py is missing")
@pytest.mark.parametrize("name", ["layernorm", "prmsnorm"])
@pytest.mark.parametrize("conv_mode", ["spatial", "channel"])
def test_triton_backend_matches_torch_backend(name, conv_mode):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    options = dict(conv=True, conv_mode=conv_mode, partial=0.25 if name == "prmsnorm" else None)
    expected = randomize_parameters(rn.build_norm(name, 6, backend="torch", **options).to(device))
    actual = rn.build_norm(name, 6, backend="triton", **options).to(device)
    actual.load_state_dict(expected.state_dict())
    x = torch.randn(CONV_SHAPE, device=device, requires_grad=True)
    dy = torch.randn(CONV_SHAPE, device=device)

    def output_and_grads(norm):
        y = norm(x)
        return (y, *torch.autograd.grad(y, (x, *norm.parameters()), dy))

    torch.testing.assert_close(output_and_grads(actual), output_and_grads(expected))
