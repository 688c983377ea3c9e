"""The drift monitor on constructed activations: exact |mean|/RMS and partial-RMS errors, per-layer
keys for row norms and conv norms, sampling, once-per-layer warnings, no hooks left behind."""
from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
from torch import nn

from repro import kernels
from repro.nn import BatchNorm2d, ConvNorm, LayerNorm, RMSNorm, build_norm
from repro.track.drift import DriftMonitor, DriftWarning, row_stats
from train_helpers import cifar_jpeg, one_thread  # noqa: F401


def shifted_rows(rows: int, dim: int, shift: float) -> torch.Tensor:
    """Rows of ±1 (zero mean, RMS 1) plus `shift`: |mean|/RMS = |c|/sqrt(1 + c^2) exactly."""
    base = torch.tensor([1.0, -1.0]).repeat(dim // 2).expand(rows, dim)
    return base + shift


@pytest.mark.parametrize("shift", [0.0, 0.5, -2.0, 10.0])
def test_mean_over_rms_of_a_known_shift(shift):
    stats = row_stats(shifted_rows(4, 64, shift))
    assert stats["mean_over_rms"] == pytest.approx(abs(shift) / math.sqrt(1 + shift ** 2), abs=1e-6)
    assert "partial_rel_err" not in stats


def test_partial_error_of_a_known_layout():
    # first quarter 3s, the rest 1s: prefix RMS 3, full RMS sqrt((16*9 + 48)/64) = sqrt(3)
    rows = torch.ones(5, 64)
    rows[:, :16] = 3.0
    full = math.sqrt(3.0)
    assert row_stats(rows, 0.25)["partial_rel_err"] == pytest.approx((3 - full) / full, rel=1e-6)
    assert row_stats(rows, 1.0).keys() == {"mean_over_rms"}  # p = 1 is RMSNorm: nothing to estimate


def test_zero_rows_give_zero_not_nan():
    assert row_stats(torch.zeros(3, 8), 0.5) == {"mean_over_rms": 0.0, "partial_rel_err": 0.0}


def test_monitor_logs_every_kind_of_norm_layer_with_exact_values():
    model = nn.ModuleDict({
        "rms": RMSNorm(64),
        "prms": RMSNorm(64, partial=0.25),
        "ln": LayerNorm(64),
        "conv": ConvNorm(2, functools.partial(kernels.rms_norm, partial=0.5)),
        "conv_channel": ConvNorm(4, functools.partial(kernels.layer_norm), mode="channel"),
        "bn": BatchNorm2d(2),
    })
    monitor = DriftMonitor(model, every=3, mean_threshold=10.0, partial_threshold=10.0)
    assert set(monitor.layers) == {"rms", "prms", "ln", "conv", "conv_channel"}  # BatchNorm has no rows

    rows = shifted_rows(4, 64, 0.5)
    prefix_heavy = torch.ones(4, 64)
    prefix_heavy[:, :16] = 3.0
    conv = torch.ones(2, 2, 4, 4)
    conv[:, :, :2] = 3.0      # top half of every map: prefix RMS 3 at p = 0.5, full sqrt(5)
    channel = torch.zeros(1, 4, 2, 2)
    channel[:, 0] = 4.0       # each position: channels (4, 0, 0, 0): mean 1, RMS 2
    with monitor.observe(3):
        model["rms"](rows)
        model["prms"](prefix_heavy)
        model["ln"](rows + 1.5)
        model["conv"](conv)
        model["conv_channel"](channel)
        model["bn"](conv)
    metrics, raised = monitor.collect()
    assert raised == []
    expected = {
        "drift/rms/mean_over_rms": 0.5 / math.sqrt(1.25),
        "drift/prms/mean_over_rms": 1.5 / math.sqrt(3.0),
        "drift/prms/partial_rel_err": (3 - math.sqrt(3)) / math.sqrt(3),
        "drift/ln/mean_over_rms": 2.0 / math.sqrt(5.0),
        "drift/conv/mean_over_rms": 2.0 / math.sqrt(5.0),
        "drift/conv/partial_rel_err": (3 - math.sqrt(5)) / math.sqrt(5),
        "drift/conv_channel/mean_over_rms": 0.5,
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-6), key
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_only_sampled_steps_are_observed_and_micro_batches_average():
    model = nn.Sequential(RMSNorm(64))
    monitor = DriftMonitor(model, every=2)
    with monitor.observe(1):
        model(shifted_rows(2, 64, 0.5))
    assert monitor.collect() == ({}, [])
    with monitor.observe(2):
        model(shifted_rows(2, 64, 0.0))
        model(shifted_rows(2, 64, 1.0))
    metrics, _ = monitor.collect()
    assert metrics["drift/0/mean_over_rms"] == pytest.approx((0 + 1 / math.sqrt(2)) / 2, rel=1e-6)
    assert monitor.collect() == ({}, [])  # a sample is returned once
    assert not DriftMonitor(model, every=0).due(4)
    # a due step that must not be observed (its norms are being timed) passes the sample on
    with monitor.observe(4, defer=True):
        model(shifted_rows(2, 64, 0.5))
    assert monitor.collect() == ({}, [])
    with monitor.observe(5):
        model(shifted_rows(2, 64, 0.0))
    assert monitor.collect()[0] == {"drift/0/mean_over_rms": 0.0}
    with monitor.observe(7):
        model(shifted_rows(2, 64, 0.0))
    assert monitor.collect() == ({}, [])


def test_warns_once_per_layer_and_never_for_layernorm_means():
    model = nn.ModuleDict({"prms": RMSNorm(64, partial=0.25), "ln": LayerNorm(64)})
    monitor = DriftMonitor(model, every=1, mean_threshold=0.3, partial_threshold=0.1)
    shifted = shifted_rows(4, 64, 2.0)  # mean/RMS 0.89 in both layers
    prefix_heavy = torch.ones(4, 64)
    prefix_heavy[:, :16] = 3.0
    with pytest.warns(DriftWarning) as record:
        with monitor.observe(1):
            model["prms"](shifted + prefix_heavy)
            model["ln"](shifted)
        _, raised = monitor.collect()
    assert len(raised) == 2 and len(record) == 2
    assert all("'prms'" in message for message in raised)
    assert {("prms", "mean_over_rms"), ("prms", "partial_rel_err")} == monitor.warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning for the same layer would raise here
        with monitor.observe(2):
            model["prms"](shifted + prefix_heavy)
        metrics, raised = monitor.collect()
    assert raised == [] and metrics["drift/prms/mean_over_rms"] > 0.3


def test_monitors_a_model_built_by_the_factory_under_autograd():
    model = nn.Sequential(nn.Linear(16, 32), build_norm("prmsnorm", 32, partial=0.25), nn.Linear(32, 2))
    monitor = DriftMonitor(model, every=1)
    with monitor.observe(1):
        model(torch.randn(8, 16)).sum().backward()
    metrics, _ = monitor.collect()
    assert set(metrics) == {"drift/1/mean_over_rms", "drift/1/partial_rel_err"}
    assert all(0 <= v < 10 and math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("kwargs, message", [
    ({"every": -1}, "every must be an int >= 0"),
    ({"every": 2, "mean_threshold": 0}, "mean_threshold must be a number > 0"),
    ({"every": 2, "partial_threshold": "x"}, "partial_threshold must be a number > 0"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DriftMonitor(nn.Sequential(RMSNorm(4)), **kwargs)


def test_track_drift_in_a_real_run(cifar_jpeg, tmp_path):  # noqa: F811
    """track.drift=true in repro-train: drift rows in metrics.jsonl, warnings in summary.json."""
    import json

    from repro.track import read_metrics
    from repro.train import train
    from train_helpers import smoke_config

    cfg = smoke_config(cifar_jpeg, "norm=prmsnorm", "trainer.max_steps=4", "trainer.norm_timing_every=2",
                       "track.drift=true", "track.drift_every=2", "track.drift_mean_threshold=1e-6",
                       "track.drift_partial_threshold=1e-6")
    with pytest.warns(DriftWarning):
        train(cfg, tmp_path)
    drift_rows = [r for r in read_metrics(tmp_path) if any(k.startswith("drift/") for k in r)]
    # steps 2 and 4 are timed, so the step-2 sample moves to step 3 (step 4's would be step 5)
    assert [(r["step"], r["split"]) for r in drift_rows] == [(3, "train")]
    layers = {k.split("/")[1] for k in drift_rows[0] if k.startswith("drift/")}
    assert len(layers) == 9 and all(0 <= drift_rows[0][f"drift/{name}/mean_over_rms"] <= 1 for name in layers)
    warned = json.loads((tmp_path / "summary.json").read_text())["drift/warnings"]
    assert warned.count("drift: norm layer") == 18  # each of the 9 layers, both statistics, once


def test_track_drift_is_off_by_default_and_its_options_are_checked(cifar_jpeg, tmp_path):  # noqa: F811
    from repro.track import read_metrics
    from repro.train import train
    from repro.train.config import ConfigError
    from train_helpers import smoke_config

    train(smoke_config(cifar_jpeg, "trainer.max_steps=2"), tmp_path)
    assert not any(k.startswith("drift/") for r in read_metrics(tmp_path) for k in r)
    for override, key in (("track.drift_every=0", "track.drift_every"),
                          ("track.drift_mean_threshold=0", "track.drift_mean_threshold")):
        with pytest.raises(ConfigError, match=key):
            train(smoke_config(cifar_jpeg, "track.drift=true", override), tmp_path / "bad")
