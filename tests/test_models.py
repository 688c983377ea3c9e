"""ConvPool-CNN-C and ViT: the paper's layout, norms only from the factory, every norm trains."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from repro.models import ConvPoolCNNC, ViT
from repro.nn import NORM_NAMES, ConvNorm, NormFactory, NormLayer
from train_helpers import one_thread  # noqa: F401


def factory(name, **options):
    return NormFactory(name, partial=0.125 if name == "prmsnorm" else None, **options)


def test_convpool_cnn_c_layout():
    model = ConvPoolCNNC(factory("rmsnorm"))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0]) for c in convs] == [
        (3, 96, 3, 1), (96, 96, 3, 1), (96, 96, 3, 1), (96, 192, 3, 1), (192, 192, 3, 1), (192, 192, 3, 1),
        (192, 192, 3, 0), (192, 192, 1, 0), (192, 192, 1, 0), (192, 10, 1, 0),
    ]
    layers = list(model.features)
    # norm right after each hidden conv, then leaky ReLU(0.1): the norm sits before the nonlinearity
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            assert isinstance(layers[i + 1], ConvNorm) and layers[i + 1].mode == "spatial"
            assert isinstance(layers[i + 2], nn.LeakyReLU) and layers[i + 2].negative_slope == 0.1
    assert sum(isinstance(m, nn.MaxPool2d) for m in layers) == 2
    assert [m.p for m in layers if isinstance(m, nn.Dropout)] == [0.5, 0.5]


def test_convpool_cnn_channel_mode_and_weight_norm():
    channel = ConvPoolCNNC(factory("layernorm", conv_mode="channel"), width=4)
    assert {m.mode for m in channel.modules() if isinstance(m, ConvNorm)} == {"channel"}
    weightnorm = ConvPoolCNNC(factory("weightnorm"), width=4)
    convs = [m for m in weightnorm.modules() if isinstance(m, nn.Conv2d)]
    assert all(parametrize.is_parametrized(c, "weight") for c in convs)
    assert not any(isinstance(m, NormLayer) for m in weightnorm.modules())


def test_vit_takes_every_norm_from_the_factory():
    model = ViT(factory("layernorm"), dim=48, depth=3, heads=12)
    assert sum(isinstance(m, NormLayer) for m in model.modules()) == 2 * 3 + 1
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())  # no torch norm slipped in
    wn = ViT(factory("weightnorm"), dim=48, depth=3, heads=12)
    linears = [m for m in wn.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert linears and all(parametrize.is_parametrized(m, "weight") for m in linears)


def test_vit_default_size():
    with torch.device("meta"):
        model = ViT(factory("rmsnorm"))
    assert len(model.blocks) == 7 and model.pos.shape == (1, 64, 384) and model.blocks[0].heads == 12


@pytest.mark.parametrize("name", NORM_NAMES)
@pytest.mark.parametrize("make", [lambda f: ConvPoolCNNC(f, width=4, dropout=0.0),
                                  lambda f: ViT(f, dim=24, depth=2, heads=3)], ids=["cnn", "vit"])
def test_every_norm_runs_forward_and_backward(make, name):
    torch.manual_seed(0)
    model = make(factory(name))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits = model(images)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, labels).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
