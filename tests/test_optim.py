"""Weight decay goes only where it belongs: linear and conv weights, never norm parameters,
biases, embeddings or position tables."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from repro.models import ConvPoolCNNC, Transformer, ViT
from repro.nn import NormFactory
from repro.train.optim import OptimConfig, build_optimizer, parameter_groups
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
    config = OptimConfig(name="adamw", _target_="torch.optim.AdamW", lr=LR, weight_decay=WD)
    optimizer = build_optimizer(parameter_groups(model, WD), config)
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


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_each_optim_file_instantiates_its_class_with_its_own_options(name, cls):
    """No switch over names: the file's _target_ is the class, and only the options the file sets
    reach it (Adam gets betas, SGD momentum and nesterov)."""
    from omegaconf import OmegaConf

    from repro.util import check_options
    from train_helpers import CONF_DIR, compose_config

    cfg = compose_config(f"optim={name}", "optim.lr=0.05")
    config = check_options(cfg.optim, OptimConfig, "optim")
    optimizer = build_optimizer([nn.Parameter(torch.zeros(3))], config)
    assert type(optimizer) is cls and optimizer.defaults["lr"] == 0.05
    file = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "optim" / f"{name}.yaml"))
    if "betas" in file:
        assert optimizer.defaults["betas"] == tuple(file["betas"])
    if "momentum" in file:
        assert optimizer.defaults["momentum"] == file["momentum"] and optimizer.defaults["nesterov"] == file["nesterov"]


def test_a_target_that_is_not_an_optimizer_is_a_one_line_error():
    from repro.train import ConfigError, validate_config
    from train_helpers import compose_config

    for target in ("torch.optim.Nope", "torch.nn.Linear"):
        with pytest.raises(ConfigError) as error:
            validate_config(compose_config(f"optim._target_={target}"))
        assert str(error.value) == f"optim._target_={target!r} is not allowed: must name a torch.optim.Optimizer class"
