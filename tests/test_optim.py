"""Weight decay goes only where it belongs: linear and conv weights, never norm parameters,
biases, embeddings or position tables."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from repro.models import ConvPoolCNNC, Transformer, ViT
from repro.nn import NormFactory
from repro.train.optim import build_optimizer, parameter_groups
from train_helpers import one_thread  # noqa: F401

LR, WD = 0.1, 0.5


def _models():
    yield "transformer-layernorm", Transformer(NormFactory("layernorm"), vocab_size=20, dim=16, ffn=32, heads=2,
                                                encoder_layers=1, decoder_layers=1, max_positions=16)
    yield "vit-rmsnorm", ViT(NormFactory("rmsnorm"), dim=16, depth=1, heads=2, patch=8)
    yield "cnn-prmsnorm", ConvPoolCNNC(NormFactory("prmsnorm", partial=0.5), width=4)
    yield "cnn-weightnorm", ConvPoolCNNC(NormFactory("weightnorm"), width=4)
    yield "cnn-batchnorm", ConvPoolCNNC(NormFactory("batchnorm"), width=4)


def _expected_exempt(model: nn.Module) -> set[str]:
    """Independently of parameter_groups: what must not decay, by name."""
    names = set()
    for name, p in model.named_parameters():
        owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        if p.ndim <= 1 or name == "pos" or isinstance(owner, nn.Embedding) or name.endswith("original0"):
            names.add(name)
    return names


@pytest.mark.parametrize("name,model", list(_models()), ids=[n for n, _ in _models()])
def test_an_adamw_step_decays_only_weight_matrices(name, model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(parameter_groups(model, WD), name="adamw", lr=LR, weight_decay=WD)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's update is 0: only decoupled weight decay moves a parameter
    optimizer.step()
    exempt = _expected_exempt(model)
    assert exempt and len(exempt) < len(before)
    for n, p in model.named_parameters():
        if n in exempt:
            assert torch.equal(p, before[n]), f"{n} decayed"
        else:
            torch.testing.assert_close(p, before[n] * (1 - LR * WD), msg=f"{n} not decayed")


def test_norm_gains_are_exempt_and_every_parameter_is_in_one_group():
    model = ConvPoolCNNC(NormFactory("layernorm"), width=4)
    decay, no_decay = parameter_groups(model, WD)
    assert decay["weight_decay"] == WD and no_decay["weight_decay"] == 0.0
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert all(p.ndim >= 2 for p in decay["params"])
