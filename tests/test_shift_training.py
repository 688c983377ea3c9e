"""The shift-training analysis: its premise checked on the models themselves (a Transformer's and a
channel-mode CNN's norm inputs move by a constant per row, a spatial-mode CNN's do not), the
refusal of the spatial CNN, the seed statistics, and run reuse / resume on tiny translation runs."""
from __future__ import annotations

import json

import pytest
import torch
from scipy import stats
from torch import nn

from repro.analysis import shift_training
from repro.analysis.cli import run_analyze
from repro.nn import NormLayer
from repro.tables import collect_local
from repro.tables.stats import paired_interval
from repro.tasks import build_task_and_model
from repro.track.drift import norm_rows_layout
from repro.util import ConfigError
from train_helpers import compose_config, corpus, one_thread  # noqa: F401

SETTINGS = {  # (overrides, the premise holds)
    "transformer": (["experiment=translation_smoke", "data.root=unused", "model.encoder_layers=2"], True),
    "cnn, channel mode": (["experiment=smoke", "data.root=unused", "norm.conv_mode=channel"], True),
    "cnn, spatial mode": (["experiment=smoke", "data.root=unused", "norm.conv_mode=spatial"], False),
}


def _feeding_layers(model: nn.Module, forward) -> dict:
    """{norm layer: the Linear/Conv that ran last before it}: the layer whose output it normalizes."""
    order, handles = [], []
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            handles.append(module.register_forward_hook(lambda m, *_: order.append(("layer", m))))
        elif isinstance(module, NormLayer):
            handles.append(module.register_forward_pre_hook(lambda m, _: order.append(("norm", m))))
    with torch.no_grad():
        forward()
    for handle in handles:
        handle.remove()
    feeding, last = {}, None
    for kind, module in order:
        if kind == "layer":
            last = module
        elif module not in feeding:
            feeding[module] = last
    return feeding


def _norm_io(model, norm_layer, forward):
    """(input rows as the layer normalizes them, output) of `norm_layer`'s first call in forward()."""
    seen = {}

    def hook(module, args, output):
        seen.setdefault("io", (norm_rows_layout(module)[0](args[0]).detach().clone(), output.detach().clone()))
    handle = norm_layer.register_forward_hook(hook)
    with torch.no_grad():
        forward()
    handle.remove()
    return seen["io"]


def _model_and_forward(cfg, setting: str):
    """The setting's model (seed 0, eval mode) and a forward pass over a small random batch."""
    torch.manual_seed(0)
    _, model = build_task_and_model(cfg)
    model.eval()
    if "transformer" in setting:
        src, tgt = torch.randint(4, 100, (3, 7)), torch.randint(4, 100, (3, 5))
        return model, lambda: model(src, tgt)
    images = torch.randn(2, 3, 32, 32)
    return model, lambda: model(images)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_the_premise_check_agrees_with_the_models(setting, norm):
    """For every norm layer, shifting only the layer that feeds it by c moves the norm's input rows
    by a constant per row exactly where check_premise allows the setting; there LayerNorm's output
    is unchanged and RMSNorm's is not. (Run in eval mode: no dropout.)"""
    overrides, holds = SETTINGS[setting]
    cfg = compose_config(*overrides, f"norm={norm}", "model.dropout=0.0")
    if holds:
        shift_training.check_premise(cfg)
    else:
        with pytest.raises(ConfigError, match="norm.conv_mode=spatial .* allowed: task=multi30k_transformer"):
            shift_training.check_premise(cfg)
    model, forward = _model_and_forward(cfg, setting)
    feeding = _feeding_layers(model, forward)
    assert len(feeding) >= (6 if "transformer" in setting else 9)
    for norm_layer, layer in feeding.items():
        rows, out = _norm_io(model, norm_layer, forward)
        with torch.no_grad():
            layer.weight.add_(0.5)
        rows_shifted, out_shifted = _norm_io(model, norm_layer, forward)
        with torch.no_grad():
            layer.weight.sub_(0.5)
        moved = rows_shifted - rows
        spread = (moved - moved.mean(-1, keepdim=True)).abs().max() / moved.abs().max()
        assert (spread < 1e-4) == holds, (setting, spread)
        if holds:  # the premise: LayerNorm removes the shift, RMSNorm does not
            change = (out_shifted - out).abs().max() / out.abs().max()
            assert (change < 1e-3) == (norm == "layernorm"), (norm, change)


@pytest.mark.parametrize("setting", ["transformer", "cnn, channel mode"])
def test_premise_layers_are_the_layers_that_feed_a_norm(setting):
    """The layers the shift touches are exactly those whose output a norm normalizes (found by
    tracing which Linear/Conv ran last before each norm): every one of them, and no other."""
    overrides, _ = SETTINGS[setting]
    cfg = compose_config(*overrides, "norm=layernorm", "model.dropout=0.0")
    model, forward = _model_and_forward(cfg, setting)
    chosen = shift_training.premise_layers(model)
    assert len({id(m) for m in chosen}) == len(chosen)
    assert {id(m) for m in chosen} == {id(m) for m in _feeding_layers(model, forward).values()}


def test_shifted_init_task_shifts_only_the_layers_a_norm_normalizes():
    """Attention output projections and the FFNs' second Linears are shifted; the queries, the
    fused keys/values, the FFNs' first Linears, every bias and the embedding are not."""
    from hydra.utils import instantiate

    from repro.models.transformer import Attention, FeedForward
    from repro.nn import NormFactory

    cfg = compose_config("experiment=translation_smoke", "data.root=unused", "model.encoder_layers=2")
    options = {k: v for k, v in cfg.task.items() if k != "_target_"}
    model_ctor = instantiate(cfg.model)
    torch.manual_seed(0)
    plain = build_task_and_model(cfg)[1]
    torch.manual_seed(0)
    task = shift_training.shifted_init_task("repro.tasks.Translation", 0.2, model=model_ctor, vocab_size=400,
                                            tokenizer="unused", root="unused", **options)
    shifted = task.build_model(NormFactory("rmsnorm"))
    modules = dict(shifted.named_modules())
    must_shift, must_not = set(), set()
    for name, module in plain.named_modules():
        if isinstance(module, Attention):
            must_shift.add(f"{name}.out")
            must_not |= {f"{name}.q", f"{name}.kv"}
        elif isinstance(module, FeedForward):
            must_shift.add(f"{name}.3")
            must_not.add(f"{name}.0")
    assert len(must_shift) == 2 * 2 + 3 and len(must_not) == 2 * 3 + 5  # encoder: 2 layers; decoder: 1
    linears = {name for name, m in plain.named_modules() if isinstance(m, nn.Linear)}
    assert linears == must_shift | must_not
    for name, a in plain.named_modules():
        if name in linears:
            b = modules[name]
            torch.testing.assert_close(b.weight, a.weight + 0.2 if name in must_shift else a.weight, rtol=0, atol=0)
            torch.testing.assert_close(b.bias, a.bias, rtol=0, atol=0)
    torch.testing.assert_close(shifted.embed.weight, plain.embed.weight)  # the tied output projection too
    assert shift_training.shift_weights(plain, 0.0) == len(must_shift)
    with pytest.raises(ConfigError, match="task.shift_layers must be 'norm_inputs'"):
        shift_training.shifted_init_task("repro.tasks.Translation", 0.2, shift_layers="all", model=model_ctor,
                                         vocab_size=400, tokenizer="unused", root="unused", **options)


def test_run_config_names_the_layer_selection():
    """A run's config records which layers are shifted, so a run store of the earlier experiment
    (every Linear shifted, no task.shift_layers) is trained again, never reused."""
    cfg = shift_training.run_config("multi30k_transformer", "rmsnorm", 0.2, 1, 8, "unused")
    assert cfg.task.shift_layers == "norm_inputs" and cfg.task._target_ == shift_training.FACTORY
    from omegaconf import OmegaConf

    earlier = OmegaConf.to_container(cfg, resolve=True)
    del earlier["task"]["shift_layers"]
    assert earlier != OmegaConf.to_container(cfg, resolve=True)


def test_the_spatial_cnn_is_refused_in_one_line_before_any_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_analyze(["shift-training", "--task", "cifar10_cnn", "--data-root", str(tmp_path), "--runs",
                     str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--set", "experiment=smoke"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "norm.conv_mode=spatial" in err and "norm.conv_mode=channel" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_seed_statistics_match_scipy():
    seeds = (1, 2, 3)
    finals = {}
    effect = {"layernorm": (0.01, -0.02, 0.015), "rmsnorm": (0.30, 0.35, 0.28)}
    for norm in shift_training.NORMS:
        for i, seed in enumerate(seeds):
            base = 4.0 + 0.1 * seed
            finals[(norm, 0.0, seed)] = {"eval": base, "train": base + 0.5}
            finals[(norm, 0.2, seed)] = {"eval": base + effect[norm][i], "train": base + 0.5 + 2 * effect[norm][i]}
    effects = shift_training.shift_effects(finals, seeds)
    for norm in shift_training.NORMS:
        diffs = effects[(norm, "eval")]["per_seed"]
        assert diffs == pytest.approx(effect[norm])
        interval = effects[(norm, "eval")]["interval"]
        ci = stats.ttest_1samp(list(effect[norm]), 0.0).confidence_interval(0.95)
        assert (interval.low, interval.high, interval.df) == pytest.approx((ci.low, ci.high, 2))
        assert interval.estimate == pytest.approx(sum(effect[norm]) / 3)
    contrast = effects[("contrast", "train")]["interval"]
    welch = stats.ttest_ind([2 * e for e in effect["rmsnorm"]], [2 * e for e in effect["layernorm"]], equal_var=False)
    assert (contrast.low, contrast.high) == pytest.approx(tuple(welch.confidence_interval(0.95)))
    assert shift_training.verdict(contrast) == "RMSNorm is hurt more by the shift than LayerNorm"
    # overlapping effects: no verdict
    for seed, e in zip(seeds, (0.1, -0.2, 0.3)):
        finals[("rmsnorm", 0.2, seed)]["eval"] = finals[("rmsnorm", 0.0, seed)]["eval"] + e
    assert shift_training.verdict(shift_training.shift_effects(finals, seeds)[("contrast", "eval")]["interval"]) \
        == "inconclusive"
    assert shift_training.verdict(None).startswith("inconclusive")
    worse = "RMSNorm is hurt more by the shift than LayerNorm"
    assert shift_training.overall_verdict({"val": worse, "train": worse}) == f"{worse} (both metrics agree)"
    assert shift_training.overall_verdict({"val": "inconclusive", "train": "inconclusive"}).startswith("inconclusive")
    split = shift_training.overall_verdict({"val": "inconclusive", "train": worse})
    assert split.startswith("no overall verdict") and f"train: {worse}" in split
    assert paired_interval([0.5]) is None and paired_interval([0.5, 0.5]).low == 0.5


def test_run_state_reuses_resumes_or_starts_fresh(tmp_path):
    config = {"seed": 1, "trainer": {"max_steps": 4, "resume": "auto"}, "task": {"init_center": 0.2}}
    run_dir = tmp_path / "run"
    assert shift_training.run_state(run_dir, config) == "fresh"
    run_dir.mkdir()
    import yaml

    (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, "trainer": {"max_steps": 4, "resume": "none"}}))
    (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))
    assert shift_training.run_state(run_dir, config) == "resume"  # trainer.resume does not count
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert shift_training.run_state(run_dir, config) == "completed"
    assert shift_training.run_state(run_dir, {**config, "seed": 2}) == "fresh"


def test_shift_training_trains_reuses_and_resumes_translation_runs(corpus, tmp_path):  # noqa: F811
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = ["shift-training", "--data-root", str(corpus), "--seeds", "1,2", "--steps", "4", "--runs", str(runs),
            "--out", str(out), "--set", "experiment=translation_smoke", f"data.tokenizer={tmp_path}/spm.model",
            "model.dim=32", "model.ffn=64", "model.heads=2", "data.max_tokens=1024", "optim.lr=0.003",
            "optim.schedule.warmup_steps=10"]
    assert run_analyze(args) == 0
    records = collect_local([runs])
    assert sorted((r.norm, r.config["task"]["init_center"], r.seed) for r in records) == sorted(
        (norm, c, s) for norm in ("layernorm", "rmsnorm") for c in (0.0, 0.2) for s in (1, 2))
    assert all(r.status == "completed" and r.summary["step"] == 4 for r in records)
    assert all("val/loss" in r.summary and "val/bleu" not in r.summary for r in records)  # no decoding
    note = (out / "shift_training.md").read_text()
    assert "| rmsnorm | 0.2 | 2 |" in note and "- final validation loss: " in note and "- Overall: " in note
    # 1+1 layers: the encoder's attention output and FFN second Linear, the decoder's two and its FFN's
    assert "the 5 layers whose output a norm normalizes (`attn.sublayer.out`, 2 × `ffn.sublayer.3`" in note
    assert (out / "shift_training.png").read_bytes()[:4] == b"\x89PNG"
    # No dropout (translation_smoke): LayerNorm's loss is invariant to the shift, so its shifted run is the
    # default run, shifted (the same train loss at every logged step); RMSNorm's is not.
    assert "Without dropout the premise holds in training too" in note
    by_key = {(r.norm, r.config["task"]["init_center"], r.seed): [v for _, v in r.series("train/loss", "train")]
              for r in records}
    for seed in (1, 2):
        default, shifted = by_key[("layernorm", 0.0, seed)], by_key[("layernorm", 0.2, seed)]
        assert len(default) == 4 and shifted == pytest.approx(default, rel=1e-4, abs=1e-4)
        assert by_key[("rmsnorm", 0.2, seed)] != pytest.approx(by_key[("rmsnorm", 0.0, seed)], rel=1e-3, abs=1e-3)
    stamps = {r.path.name: (r.path / "summary.json").stat().st_mtime_ns for r in records}
    # the same command again reuses the completed runs (only redraws)
    assert run_analyze(args) == 0
    assert {r.path.name: (r.path / "summary.json").stat().st_mtime_ns for r in collect_local([runs])} == stamps
    # an interrupted run resumes from its last checkpoint; the others stay as they are
    interrupted = runs / "rmsnorm_center0.2_seed2"
    summary = json.loads((interrupted / "summary.json").read_text())
    (interrupted / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    assert run_analyze(args) == 0
    resumed = json.loads((interrupted / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["starts"][-1]["checkpoint"].endswith("last.pt")
    assert all((runs / name / "summary.json").stat().st_mtime_ns == t for name, t in stamps.items()
               if name != interrupted.name)
