"""Shift sensitivity in training: LayerNorm vs RMSNorm when the weights start around a centre of
0.2 instead of 0 (the authors' experiment on RMSNorm's lost re-centering invariance).

Shifting every weight of a layer by c moves each summed input of a row by the same c·Σx; LayerNorm
removes that, RMSNorm does not (see the invariance analysis). Here the ConvPool-CNN-C is trained on
CIFAR-10 by the shared trainer (repro.train.train), once from its default initialization and once
with c added to every conv/linear weight, for LayerNorm and RMSNorm, and the curves are compared.

The shifted model comes from a task factory (`shifted_init_task`) that the run's config names as
`task._target_`, so the runs are ordinary repro-train runs, recorded in ordinary run stores.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from repro.util import markdown_table

from .common import pyplot, save_figure, write_note

NORMS = ("layernorm", "rmsnorm")
FACTORY = "repro.analysis.shift_training.shifted_init_task"


def shift_weights(model: nn.Module, center: float) -> int:
    """Add `center` to the weight of every conv and linear layer; returns how many were shifted."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    with torch.no_grad():
        for layer in layers:
            layer.weight.add_(center)
    return len(layers)


def shifted_init_task(base_target: str, init_center: float, **options):
    """The task `base_target` (e.g. repro.tasks.CifarClassification) built with `options`, whose
    models start with every conv/linear weight shifted by `init_center`."""
    from hydra.utils import get_class

    task = get_class(base_target)(**options)
    build = task.build_model

    def build_model(norm):
        model = build(norm)
        shift_weights(model, init_center)
        return model

    task.build_model = build_model
    return task


def _finished_with(run_dir: Path, config: dict) -> bool:
    """A completed run of exactly this config is reused, so a re-run only redraws."""
    import json

    import yaml

    summary, stored = run_dir / "summary.json", run_dir / "config.yaml"
    return (summary.exists() and stored.exists() and json.loads(summary.read_text()).get("status") == "completed"
            and yaml.safe_load(stored.read_text()) == config)


def run(out: Path, data_root: str, runs: Path, *, steps: int = 300, center: float = 0.2, seed: int = 1,
        overrides: Optional[list[str]] = None, command: str = "repro-tables analyze shift-training") -> dict:
    from omegaconf import OmegaConf

    from repro.tables import collect_local
    from repro.train import compose_config, train

    every = max(steps // 10, 1)
    results = {}
    for norm in NORMS:
        for c in (0.0, center):
            run_dir = Path(runs) / f"{norm}_center{c:g}"
            cfg = compose_config([
                "task=cifar10_cnn", f"norm={norm}", f"seed={seed}", f"data.root={data_root}", "logger=none",
                f"trainer.max_steps={steps}", f"trainer.log_every={every}", f"trainer.eval_every={every * 5}",
                "trainer.norm_timing_every=0", "trainer.progress_bar=false", "trainer.resume=none",
                f"task._target_={FACTORY}", "+task.base_target=repro.tasks.CifarClassification",
                f"+task.init_center={c}", *(overrides or []),
            ])
            if not _finished_with(run_dir, OmegaConf.to_container(cfg, resolve=True)):
                train(cfg, run_dir)
            [record] = collect_local([run_dir])
            results[(norm, c)] = record

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"layernorm": "C4", "rmsnorm": "C5"}
    eval_key = next(k for k in ("val/acc", "test/acc") if any(r.series(k) for r in results.values()))
    for (norm, c), record in results.items():
        style = dict(color=colors[norm], ls="-" if c == 0 else "--", label=f"{norm}, weights centred at {c:g}")
        left.plot(*zip(*record.series("train/loss", "train")), **style)
        right.plot(*zip(*record.series(eval_key)), marker="o", ms=3, **style)
    left.set(xlabel="step", ylabel="train/loss", title="training loss")
    right.set(xlabel="step", ylabel=eval_key, title=f"{eval_key.split('/')[0]} accuracy")
    fig.suptitle(f"ConvPool-CNN-C on CIFAR-10, {steps} steps: default init vs every weight + {center:g}")
    save_figure(fig, (left, right), out, "shift_training")

    rows = []
    for (norm, c), record in results.items():
        losses = [v for _, v in record.series("train/loss", "train")]
        rows.append([norm, f"{c:g}", f"{losses[0]:.3f}", f"{losses[-1]:.3f}",
                     f"{record.summary.get(eval_key, float('nan')):.3f}"])
    body = [
        f"ConvPool-CNN-C trained by repro-train for {steps} steps (seed {seed}; data {data_root}"
        + (f"; overrides {' '.join(overrides)}" if overrides else "") + "), once from the default "
        f"initialization and once with {center:g} added to every conv and linear weight. Runs: `{runs}`.", "",
        *markdown_table(["norm", "weight centre", "first logged train loss", "last train loss", f"final {eval_key}"],
                  rows), "",
        "This is a short budget, not the paper's schedule: it shows how each norm copes with the "
        "shifted start, not where either would end.",
    ]
    made_by = f"{command} --data-root {data_root} --steps {steps} --center {center:g} --runs {runs}"
    write_note(out, "shift_training", f"Shift sensitivity in training: weights centred at {center:g}, "
               "LayerNorm vs RMSNorm", body, made_by + (f" --set {' '.join(overrides)}" if overrides else ""))
    return {key: record.summary for key, record in results.items()}
