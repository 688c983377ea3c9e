"""Shift sensitivity in training: LayerNorm vs RMSNorm when the weights of the layers whose output
a norm normalizes start shifted by a centre c (0.2 by default) instead of 0 (the authors'
experiment on RMSNorm's lost re-centering invariance).

The premise: shifting every weight of a linear layer by c moves each of its output features for a
row by the same c·Σx; where a norm normalizes over exactly those features, LayerNorm removes the
shift and RMSNorm does not (see the invariance analysis). That holds only for the layers whose
output a norm normalizes directly, so only those are shifted (`premise_layers`):

- The Transformer (repro.models.transformer, post-norm: x = norm(x + dropout(sublayer(x)))): each
  sublayer's LAST Linear, the attention output projection (`Attention.out`) and the FFN's second
  Linear, writes into the residual stream the norm then normalizes. Its shift c·Σh (h: the
  Linear's input row) is one number per row, so x + sublayer(x) moves by the same c·Σh in every
  feature, still a constant per row, which LayerNorm's mean removes (the residual addition does
  not break the premise). Exactly so at evaluation; in training the residual dropout (p, 0.1 by
  default) zeroes a share p of the shifted features and scales the others by 1/(1−p), so the
  shift is constant per row only in expectation and LayerNorm removes only its row mean. (With
  model.pre_norm=true the same layers write into the stream every later norm reads.) The queries,
  the fused keys/values and the FFN's first Linear are NOT shifted: no norm normalizes their
  outputs (attention scores, ReLU follow), so nothing would remove their shift for either norm.
- A CNN whose norm normalizes each position over its channels (norm.conv_mode=channel): each
  conv followed by a norm (and the 10-way layer when model.final_norm=true) moves by c·Σ(patch),
  the same for every output channel of a position.
- NOT a CNN in spatial mode (each channel normalized over H×W, where c·Σ(patch) varies from
  position to position): that setting is refused (`check_premise`).

Each (norm, centre, seed) is an ordinary repro-train run (repro.train.train) in its own run store;
the shifted model comes from a task factory (`shifted_init_task`) that the run's config names as
`task._target_` (with `task.shift_layers`, so runs of another layer selection are never reused).
A completed run of the same config is reused and an interrupted one resumes from its last
checkpoint, so a rerun only redraws. The effect of the shift, (metric shifted − metric default)
per seed, is summarized per norm by its mean and 95 % t-interval over seeds (repro.tables.stats),
and the two norms' effects are compared by Welch's interval, for the final validation loss and
the final train loss alike: a verdict per metric, and an overall one only where both agree.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from repro.tables.stats import Interval, paired_interval, welch_interval
from repro.util import ConfigError, markdown_table

from .common import pyplot, save_figure, write_note

NORMS = ("layernorm", "rmsnorm")
FACTORY = "repro.analysis.shift_training.shifted_init_task"
DEFAULT_TASK = "multi30k_transformer"
# The project's CPU budget for a small Transformer on Multi30k (results/tables/table4_transformer.md),
# with evaluation by loss only: BLEU decoding would cost more than these short runs train.
TASK_DEFAULTS = {
    "multi30k_transformer": ["model.dim=128", "model.ffn=512", "model.heads=4", "data.max_tokens=2048",
                             "optim.lr=0.002", "optim.schedule.warmup_steps=400", "decode.bleu=false"],
}
METRICS = (("final validation loss", "eval"), ("final train loss", "train"))


SHIFT_LAYERS = "norm_inputs"  # task.shift_layers: the layers whose output a norm normalizes directly


def premise_layers(model: nn.Module) -> list[nn.Module]:
    """The conv/linear layers whose output a norm normalizes directly (module docstring): the
    Transformer's attention output projections and FFN second Linears; a ConvPool-CNN-C's convs
    that a norm follows. ConfigError for another model."""
    from repro.models import ConvPoolCNNC, Transformer
    from repro.models.transformer import Attention, FeedForward
    from repro.nn import NormLayer

    if isinstance(model, Transformer):
        layers = []
        for module in model.modules():
            if isinstance(module, Attention):
                layers.append(module.out)
            elif isinstance(module, FeedForward):
                layers.append(module[-1])
        return layers
    if isinstance(model, ConvPoolCNNC):
        features = list(model.features)
        layers = [layer for layer, after in zip(features, features[1:])
                  if isinstance(layer, nn.Conv2d) and isinstance(after, NormLayer)]
        if len(model.head) and isinstance(model.head[0], NormLayer):
            layers.append(model.classifier)
        return layers
    raise ConfigError(f"shift-training: no premise layers known for {type(model).__name__} "
                      "(a Transformer or a ConvPool-CNN-C)")


def shift_weights(model: nn.Module, center: float, layers: Optional[Sequence[nn.Module]] = None) -> int:
    """Add `center` to the weight of `layers` (default: `premise_layers(model)`); returns how many
    were shifted. Biases, norms and the Transformer's embedding (its output projection too) stay."""
    layers = premise_layers(model) if layers is None else list(layers)
    with torch.no_grad():
        for layer in layers:
            layer.weight.add_(center)
    return len(layers)


def shifted_init_task(base_target: str, init_center: float, shift_layers: str = SHIFT_LAYERS, **options):
    """The task `base_target` (e.g. repro.tasks.Translation) built with `options`, whose models
    start with the weights of the layers whose output a norm normalizes shifted by `init_center`."""
    from hydra.utils import get_class

    if shift_layers != SHIFT_LAYERS:
        raise ConfigError(f"shift-training: task.shift_layers must be {SHIFT_LAYERS!r}, got {shift_layers!r}")
    task = get_class(base_target)(**options)
    build = task.build_model

    def build_model(norm):
        model = build(norm)
        shift_weights(model, init_center)
        return model

    task.build_model = build_model
    return task


def check_premise(cfg) -> None:
    """ConfigError (one line) unless the shift is constant over the features each norm normalizes."""
    from repro.tasks import CifarClassification, Translation, task_class

    allowed = ("allowed: task=multi30k_transformer (or another Transformer translation task), "
               "or task=cifar10_cnn with norm.conv_mode=channel")
    cls = task_class(cfg.task)
    if issubclass(cls, Translation):
        return
    if issubclass(cls, CifarClassification) and str(cfg.model.get("_target_", "")).endswith("ConvPoolCNNC"):
        if cfg.norm.conv_mode == "channel":
            return
        raise ConfigError(
            f"shift-training: task={cfg.task.name} with norm.conv_mode={cfg.norm.conv_mode} normalizes each conv "
            "channel over H×W, where a conv's weight shift c·Σ(patch) varies with the position, so LayerNorm "
            f"does not remove it and the comparison has no premise; {allowed}")
    raise ConfigError(f"shift-training: task={cfg.task.name} is not one where the shift's premise was checked; "
                      f"{allowed}")


def run_config(task: str, norm: str, center: float, seed: int, steps: int, data_root: str,
               overrides: Sequence[str] = ()):
    """The composed repro-train config of one run: `task` with its CPU-budget defaults, the
    shifting factory as task._target_, then `overrides`; refused where the premise fails."""
    from omegaconf import open_dict

    from repro.train import compose_config

    every = max(steps // 20, 1)
    cfg = compose_config([
        f"task={task}", f"norm={norm}", f"seed={seed}", f"data.root={data_root}", "logger=none",
        *TASK_DEFAULTS.get(task, []), f"trainer.max_steps={steps}", f"trainer.log_every={every}",
        f"trainer.eval_every={max(steps // 4, 1)}", "trainer.norm_timing_every=0", "trainer.progress_bar=false",
        *overrides,
    ])
    check_premise(cfg)
    with open_dict(cfg):
        cfg.task.base_target = cfg.task._target_
        cfg.task._target_ = FACTORY
        cfg.task.init_center = float(center)
        cfg.task.shift_layers = SHIFT_LAYERS
    return cfg


def _without_resume(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    config.get("trainer", {}).pop("resume", None)
    return config


def run_state(run_dir: Path, config: dict) -> str:
    """"completed": a finished run of exactly this config (reused); "resume": an unfinished one
    (the trainer resumes from its last checkpoint); "fresh": none, or a run of another config
    (trained again from scratch, its store overwritten)."""
    import yaml

    summary, stored = run_dir / "summary.json", run_dir / "config.yaml"
    if not stored.exists() or _without_resume(yaml.safe_load(stored.read_text()) or {}) != _without_resume(config):
        return "fresh"
    done = summary.exists() and json.loads(summary.read_text()).get("status") == "completed"
    return "completed" if done else "resume"


def train_or_reuse(cfg, run_dir: Path) -> str:
    """Train `cfg` into `run_dir` unless a completed run of it is there; returns the run_state."""
    from omegaconf import OmegaConf, open_dict

    from repro.train import train

    state = run_state(run_dir, OmegaConf.to_container(cfg, resolve=True))
    if state != "completed":
        with open_dict(cfg):  # a run of another config: never resume from its checkpoint
            cfg.trainer.resume = "auto" if state == "resume" else "none"
        train(cfg, run_dir)
    return state


def final_metrics(record) -> dict:
    """{"eval": the last evaluation's loss (val, or test where there is no val split), "train": the
    last logged train loss (a mean over its log interval)} of a run record."""
    eval_key = next((k for k in ("val/loss", "test/loss") if record.summary.get(k) is not None), None)
    train = record.series("train/loss", "train")
    return {"eval": record.summary[eval_key] if eval_key else math.nan, "train": train[-1][1] if train else math.nan}


def shift_effects(finals: dict, seeds: Sequence[int], norms: Sequence[str] = NORMS, center: float = 0.2) -> dict:
    """{(norm, metric): {"per_seed": [...], "interval": paired t-interval}} of (shifted − default)
    per seed, and {("contrast", metric): Welch interval of RMSNorm's effects − LayerNorm's}, from
    finals[(norm, centre, seed)] = final_metrics(...)."""
    out = {}
    for _, metric in METRICS:
        for norm in norms:
            diffs = [finals[(norm, center, s)][metric] - finals[(norm, 0.0, s)][metric] for s in seeds]
            out[(norm, metric)] = {"per_seed": diffs, "interval": paired_interval(diffs)}
        out[("contrast", metric)] = {"interval": welch_interval(out[("rmsnorm", metric)]["per_seed"],
                                                                out[("layernorm", metric)]["per_seed"])}
    return out


def verdict(contrast: Optional[Interval]) -> str:
    """Higher loss is worse: RMSNorm is hurt more only when the whole interval of its effect minus
    LayerNorm's lies above 0."""
    if contrast is None:
        return "inconclusive (fewer than two seeds: no interval)"
    if contrast.low > 0:
        return "RMSNorm is hurt more by the shift than LayerNorm"
    if contrast.high < 0:
        return "LayerNorm is hurt more by the shift than RMSNorm"
    return "inconclusive"


def overall_verdict(verdicts: dict) -> str:
    """One statement over the metrics' verdicts ({metric name: verdict}): a verdict only where every
    metric gives the same conclusive one; otherwise what the metrics say, without a winner."""
    distinct = set(verdicts.values())
    if len(distinct) == 1 and not next(iter(distinct)).startswith("inconclusive"):
        return f"{next(iter(distinct))} (both metrics agree)"
    if all(v.startswith("inconclusive") for v in distinct):
        return "inconclusive: neither metric separates the two norms' effects"
    said = "; ".join(f"{name}: {v}" for name, v in verdicts.items())
    return f"no overall verdict: the metrics do not agree ({said})"


def _fmt(interval: Optional[Interval]) -> str:
    return "n/a (one seed)" if interval is None else f"{interval.estimate:+.3f} {interval.text(3)}"


def _mean_curve(records: list, key: str, split: Optional[str]):
    """(steps, mean, low, high) over the seeds' curves, on the steps every seed logged."""
    curves = [dict(r.series(key, split)) for r in records]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    values = [[c[s] for c in curves] for s in steps]
    return steps, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def run(out: Path, data_root: str, runs: Path, *, task: str = DEFAULT_TASK, steps: int = 400,
        center: float = 0.2, seeds: Sequence[int] = (1, 2, 3), overrides: Optional[list[str]] = None,
        command: str = "repro-tables analyze shift-training") -> dict:
    from repro.tables import collect_local

    overrides = list(overrides or [])
    configs = {(norm, c, seed): run_config(task, norm, c, seed, steps, data_root, overrides)
               for seed in seeds for norm in NORMS for c in (0.0, center)}  # every config checked first
    records = {}
    for (norm, c, seed), cfg in configs.items():
        run_dir = Path(runs) / f"{norm}_center{c:g}_seed{seed}"
        train_or_reuse(cfg, run_dir)
        [records[(norm, c, seed)]] = collect_local([run_dir])
    finals = {key: final_metrics(record) for key, record in records.items()}
    effects = shift_effects(finals, seeds, center=center)

    any_record = next(iter(records.values()))
    eval_key = next((k for k in ("val/loss", "test/loss") if any_record.summary.get(k) is not None), "val/loss")
    plt = pyplot()
    fig, panels = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"layernorm": "C4", "rmsnorm": "C5"}
    for norm in NORMS:
        for c in (0.0, center):
            group = [records[(norm, c, s)] for s in seeds]
            style = dict(color=colors[norm], ls="-" if c == 0 else "--")
            for ax, (key, split) in zip(panels, (("train/loss", "train"), (eval_key, None))):
                x, mean, low, high = _mean_curve(group, key, split)
                ax.plot(x, mean, label=f"{norm}, weights centred at {c:g}", marker="o" if split is None else None,
                        ms=3, **style)
                ax.fill_between(x, low, high, color=colors[norm], alpha=0.15)
    panels[0].set(xlabel="step", ylabel="train/loss", title="training loss (mean; band: min–max over seeds)")
    panels[1].set(xlabel="step", ylabel=eval_key, title=f"{eval_key} (mean; band: min–max over seeds)")
    fig.suptitle(f"{task}, {steps} steps, seeds {','.join(map(str, seeds))}: default init vs the weights of the "
                 f"layers a norm normalizes + {center:g}", fontsize=10)
    save_figure(fig, panels, out, "shift_training")

    rows = [[norm, f"{c:g}", str(seed), f"{finals[(norm, c, seed)]['eval']:.4f}",
             f"{finals[(norm, c, seed)]['train']:.4f}"] for (norm, c, seed) in records]
    effect_rows = [[norm, *[_fmt(effects[(norm, metric)]["interval"]) for _, metric in METRICS]] for norm in NORMS]
    effect_rows.append(["RMSNorm's effect − LayerNorm's (Welch)",
                        *[_fmt(effects[("contrast", metric)]["interval"]) for _, metric in METRICS]])
    settings = " ".join(TASK_DEFAULTS.get(task, []) + overrides)
    first_cfg = configs[(NORMS[0], center, seeds[0])]
    shifted = _shifted_layer_names(first_cfg)
    verdicts = {name: verdict(effects[("contrast", metric)]["interval"]) for name, metric in METRICS}
    body = [
        "The premise: shifting every weight of a linear layer by c moves each output feature of a row by the "
        "same c·Σx, which LayerNorm removes and RMSNorm does not. It holds only for the layers whose output a "
        "norm normalizes directly, so only those are shifted. In this post-norm Transformer "
        "(x = norm(x + dropout(sublayer(x)))) they are each sublayer's last Linear: the attention output "
        "projection and the FFN's second Linear. Their shift c·Σh (h: the Linear's input row) is one number "
        "per row, so the residual sum x + sublayer(x) moves by the same c·Σh in every feature, still a "
        "constant per row, which LayerNorm removes and RMSNorm does not. The queries, the keys/values and the "
        "FFN's first Linear keep their default initialization: no norm normalizes their outputs (attention "
        "scores, a ReLU follow), so neither norm could remove a shift there. "
        + _dropout_text(first_cfg) + " (A CNN is allowed only with norm.conv_mode=channel; the spatial mode is "
        "refused, since there a conv's shift varies over the H×W a norm normalizes.)", "",
        f"{task} trained by repro-train for {steps} steps per run (data {data_root}"
        + (f"; overrides, later ones win: {settings}" if settings else "") + f"), from the default "
        f"initialization and with {center:g} added to the weights of the {len(shifted)} layers whose output a "
        f"norm normalizes ({_layer_summary(shifted)}), for LayerNorm and RMSNorm, seeds "
        f"{', '.join(map(str, seeds))} ({len(records)} runs in `{runs}`). Final {eval_key} (the last "
        "evaluation; label-smoothed for translation, as train/loss) and final train loss (the last logged "
        "interval) of each run:", "",
        *markdown_table(["norm", "weight centre", "seed", f"final {eval_key}", "final train loss"], rows), "",
        "Effect of the shift (shifted − default, per seed; higher loss is worse): mean and 95 % one-sample "
        "t-interval over the seeds, and the difference of the two norms' effects (Welch t-interval):", "",
        *markdown_table(["norm", *[name for name, _ in METRICS]], effect_rows), "",
        "Verdict per metric (from the Welch interval: a norm is hurt more only where the whole interval lies "
        "on one side of 0):", "",
        *[f"- {name}: {v}." for name, v in verdicts.items()],
        f"- Overall: {overall_verdict(verdicts)}.", "",
        "A short budget, not the paper's schedule: it shows how each norm copes with the shifted start, not "
        "where either would end.",
    ]
    made_by = (f"{command} --task {task} --data-root {data_root} --seeds {','.join(map(str, seeds))} "
               f"--steps {steps} --center {center:g} --runs {runs}" + (f" --set {' '.join(overrides)}" if overrides else ""))
    write_note(out, "shift_training", f"Shift sensitivity in training: weights centred at {center:g}, "
               "LayerNorm vs RMSNorm", body, made_by)
    return {"finals": finals, "effects": effects, "verdicts": verdicts, "shifted": shifted}


def _shifted_layer_names(cfg) -> list[str]:
    """The names of the layers the shift touches in the model `cfg` builds (built on the CPU, not
    trained; the task's data is not read)."""
    from repro.tasks import build_task_and_model

    _, model = build_task_and_model(cfg)
    chosen = {id(layer) for layer in premise_layers(model)}
    return [name for name, module in model.named_modules() if id(module) in chosen]


def _layer_summary(names: Sequence[str]) -> str:
    """"12 x `attn.sublayer.out`, ..." : the shifted layers by their name within a block."""
    from collections import Counter

    counts = Counter(".".join(name.split(".")[2:]) if name.split(".")[0] in ("encoder", "decoder") else name
                     for name in names)
    return ", ".join(f"{n} × `{name}`" if n > 1 else f"`{name}`" for name, n in counts.items())


def _dropout_text(cfg) -> str:
    """What the residual dropout does to the premise in training."""
    invariant = ("the loss is invariant to the shift, so its gradients and Adam's updates are those of the "
                 "unshifted model and the shifted run is the default run, shifted (tests/test_shift_training.py "
                 "checks this with dropout 0: the same train loss at every logged step)")
    dropout = float(cfg.model.get("dropout", 0.0)) if "model" in cfg else 0.0
    if dropout == 0:
        return f"Without dropout the premise holds in training too: under LayerNorm {invariant}."
    return (f"The premise is exact at evaluation, but in training the residual dropout (p = {dropout:g}) zeroes "
            "a share of the shifted features and scales the others by 1/(1 − p), so there the shift is not a "
            "constant per row and LayerNorm removes only its row mean. LayerNorm's effect below therefore comes "
            f"from that dropout alone: without it, {invariant}.")
