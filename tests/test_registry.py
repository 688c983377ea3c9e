"""The norm registry is the one place a norm is described: conf/norm matches it, and a norm added
as one entry is built by the factory, measured by the drift monitor and labelled in the tables
without any other code knowing its name."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from repro.nn import NORM_NAMES, ConvNorm, NormFactory, NormLayer, NormSpec, registry
from repro.track.drift import DriftMonitor, norm_rows_layout

CONF = Path(__file__).resolve().parents[1] / "conf" / "norm"


def test_conf_norm_has_one_file_per_registry_entry():
    files = {p.stem: yaml.safe_load(p.read_text())["name"] for p in CONF.glob("*.yaml")}
    assert all(stem == name for stem, name in files.items())
    assert set(files) == set(NORM_NAMES)


def mean_only(rows, weight=None, bias=None, eps=1e-5):
    """A made-up centring norm: subtract the row mean (eps unused, kept for the op signature)."""
    y = rows - rows.mean(-1, keepdim=True)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


class MeanOnlyNorm(NormLayer):
    def __init__(self, dim, eps=1e-5, *, affine=True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.eps = eps

    def forward(self, x):
        return mean_only(x, self.weight)


@pytest.fixture
def with_new_norm(monkeypatch):
    spec = NormSpec("meanonly", "MeanOnly", module=MeanOnlyNorm, op=mean_only, eps={"inside": 1e-3},
                    centered=True)
    monkeypatch.setattr(registry, "_SPECS", (*registry._SPECS, spec))
    monkeypatch.setitem(registry.NORMS, spec.name, spec)
    return spec


def test_a_new_norm_is_one_entry(with_new_norm):
    factory = NormFactory("meanonly")
    assert factory.eps == 1e-3  # the entry's default eps
    layer, conv = factory(8), factory(4, conv=True)
    assert isinstance(layer, MeanOnlyNorm) and isinstance(conv, ConvNorm)
    assert conv.normalize.func is mean_only and conv.normalize.keywords == {"eps": 1e-3}
    with pytest.raises(ValueError, match="partial applies only to norm='prmsnorm'"):
        NormFactory("meanonly", partial=0.5)
    # the drift monitor measures it and knows it centres (so never warns about its mean)
    for module in (layer, conv):
        _, partial, centered = norm_rows_layout(module)
        assert centered and partial is None
    monitor = DriftMonitor(nn.Sequential(layer), 1, mean_threshold=1e-9)
    with monitor.observe(0):
        layer(torch.randn(3, 8) + 5)
    metrics, warnings = monitor.collect()
    assert metrics["drift/0/mean_over_rms"] > 0.5 and warnings == []


def test_tables_take_labels_and_order_from_the_registry(with_new_norm):
    from repro.tables.render import norm_label, norm_order

    assert norm_label("meanonly", None) == "MeanOnly"
    assert norm_label("prmsnorm", 0.0625) == "pRMSNorm (p=6.25%)"
    assert norm_order()[-1] == "meanonly" and norm_order()[:3] == ("none", "batchnorm", "weightnorm")


def test_each_entry_builds_what_the_factory_built_before():
    """The paper's norms keep their layers and defaults (the registry replaced hand-written
    branches, not behaviour)."""
    from repro import kernels
    from repro.nn import BatchNorm2d, L2Norm, LayerNorm, PartialRMSNorm, RMSNorm

    assert isinstance(NormFactory("rmsnorm")(8), RMSNorm) and NormFactory("rmsnorm").eps == 1e-6
    assert NormFactory("rmsnorm", eps_mode="outside").eps == 1e-8
    assert type(NormFactory("prmsnorm")(32)) is PartialRMSNorm and NormFactory("prmsnorm").partial == 0.0625
    assert type(NormFactory("layernorm")(8)) is LayerNorm and NormFactory("layernorm").eps == 1e-5
    assert type(NormFactory("l2norm")(8)) is L2Norm and NormFactory("l2norm").eps == 1e-8
    assert type(NormFactory("batchnorm")(8, conv=True)) is BatchNorm2d
    op = NormFactory("prmsnorm", partial=0.25, backend="torch")(4, conv=True).normalize
    assert op.func is kernels.rms_norm and op.keywords == dict(eps=1e-6, partial=0.25, eps_mode="inside",
                                                               backend="torch")
    assert isinstance(NormFactory("none")(8), nn.Identity) and isinstance(NormFactory("weightnorm")(8), nn.Identity)
