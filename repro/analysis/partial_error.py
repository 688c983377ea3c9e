"""The error of pRMSNorm's partial RMS estimate vs k, on real activations of a trained model.

The inputs of every norm layer of a trained run's model are captured on one training batch (rows
as the layer normalizes them: the last dim, or for conv features each channel's H×W map), and for
each p the relative error |RMS(x[:k]) − RMS(x)| / RMS(x) is averaged over rows — the prefix the
layer would use, and, for contrast, a random subset of the same size (features permuted once),
which shows whether the position of the prefix matters beyond its size.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from repro.kernels.reference import partial_size
from repro.nn import NormLayer
from repro.track.drift import norm_rows_layout, row_stats
from repro.util import markdown_table

from .common import pyplot, save_figure, write_note

PARTIALS = tuple(2.0 ** -e for e in range(7, 0, -1))  # 1/128 ... 1/2


def capture_norm_inputs(model: nn.Module, forward: Callable[[], object], max_rows: int = 4096) -> dict:
    """{layer name: (rows, N) float32} of each row-normalizing NormLayer's input during `forward()`
    (the first call of each layer, at most `max_rows` rows)."""
    captured, handles = {}, []
    for name, module in model.named_modules():
        layout = norm_rows_layout(module) if isinstance(module, NormLayer) else None
        if layout is None:
            continue

        def hook(module, args, name=name, to_rows=layout[0]):
            if name not in captured:
                rows = to_rows(args[0]).detach().float()
                captured[name] = rows.reshape(-1, rows.shape[-1])[:max_rows].clone()
        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return captured


def error_curves(rows_by_layer: dict, partials=PARTIALS, seed: int = 0) -> dict:
    """{layer: {"prefix": [(p, err)], "random subset": [(p, err)]}}; rows with fewer than 1/p
    features skip that p (k would be 0)."""
    gen = torch.Generator().manual_seed(seed)
    curves = {}
    for name, rows in rows_by_layer.items():
        shuffled = rows[:, torch.randperm(rows.shape[-1], generator=gen)]
        usable = [p for p in partials if partial_size(rows.shape[-1], p) >= 1]
        curves[name] = {
            "prefix": [(p, row_stats(rows, p)["partial_rel_err"]) for p in usable],
            "random subset": [(p, row_stats(shuffled, p)["partial_rel_err"]) for p in usable],
        }
    return curves


def shown_path(path: Path) -> str:
    """`path` relative to the repository when it lies inside it, else absolute."""
    from repro.util.paths import REPO_ROOT

    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def rerun_command(run_dir: Path, data_root: Optional[str] = None) -> str:
    """The command that trains a run store's missing checkpoint and analyses it."""
    return (f"repro-tables analyze partial-error --run {shown_path(run_dir)}"
            + (f" --data-root {data_root}" if data_root else "") + " --train-if-missing")


def retrained_dir(run_dir: Path) -> Path:
    """Where --train-if-missing trains a weightless run store's model: outputs/retrained/<name>
    in the checkout (git-ignored), so the committed store's records are left as they are."""
    from repro.util.paths import REPO_ROOT

    return REPO_ROOT / "outputs" / "retrained" / Path(run_dir).name


def train_from_store(run_dir: Path, into: Path, data_root: Optional[str] = None) -> None:
    """Train the run a store's config.yaml describes into `into` with the shared trainer (resuming
    there if a retraining was killed; no W&B): committed run stores keep no weights (.gitignore:
    results/runs/**/*.pt), their config is what rebuilds them."""
    from omegaconf import OmegaConf

    from repro.train import train

    cfg = OmegaConf.load(Path(run_dir) / "config.yaml")
    if data_root:
        cfg.data.root = data_root
    cfg.logger = {"name": "none"}
    cfg.trainer.resume = "auto"
    train(cfg, Path(into))


# Options that do not change what a retrained run learns (where its data lives, its logger, how
# it resumes and shows progress).
_NOT_THE_RUN = (("logger",), ("data", "root"), ("trainer", "resume"), ("trainer", "progress_bar"))


def _the_run(config: dict) -> dict:
    import copy

    config = copy.deepcopy(config)
    for path in _NOT_THE_RUN:
        parent = config
        for key in path[:-1]:
            parent = parent.get(key, {}) if isinstance(parent, dict) else {}
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return config


def weights_of(run_dir: Path, into: Path) -> Optional[Path]:
    """The final checkpoint of the run: the store's own, else one retrained from its config into
    `into` (only if that folder holds the same run, completed)."""
    import json

    import yaml

    own = Path(run_dir) / "checkpoints" / "last.pt"
    if own.is_file():
        return own
    into = Path(into)
    try:
        same = (_the_run(yaml.safe_load((into / "config.yaml").read_text()))
                == _the_run(yaml.safe_load((Path(run_dir) / "config.yaml").read_text())))
        done = json.loads((into / "summary.json").read_text()).get("status") == "completed"
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return None
    last = into / "checkpoints" / "last.pt"
    return last if same and done and last.is_file() else None


def load_trained(run_dir: Path, data_root: Optional[str] = None, weights: Optional[Path] = None):
    """(task, model) of a finished run: its config.yaml rebuilt as repro-train builds it, the
    weights (default: its checkpoints/last.pt) loaded, the task's data set up on the CPU."""
    from omegaconf import OmegaConf

    from repro.tasks import build_task_and_model
    from repro.train import checkpoint as ckpt

    run_dir = Path(run_dir)
    path = weights or run_dir / "checkpoints" / "last.pt"
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"--run {run_dir}: no config.yaml (not a repro-train run store)")
    if not path.is_file():
        raise FileNotFoundError(f"--run {run_dir}: no checkpoints/last.pt (checkpoints are not committed); "
                                f"train it from its config.yaml with: {rerun_command(run_dir, data_root)}")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if data_root:
        cfg.data.root = data_root
    task, model = build_task_and_model(cfg)
    model.load_state_dict(ckpt.load(path)["model"])
    model.eval()
    task.setup(torch.device("cpu"))
    return task, model, cfg


def run(out: Path, run_dir: Path, data_root: Optional[str] = None, *, train_if_missing: bool = False,
        retrain_into: Optional[Path] = None, command: str = "repro-tables analyze partial-error") -> dict:
    from repro.util.paths import REPO_ROOT

    run_dir = Path(run_dir)
    outside = not run_dir.resolve().is_relative_to(REPO_ROOT)
    if outside:
        print(f"warning: --run {run_dir} lies outside the repository ({REPO_ROOT}): the note will name a run "
              "nobody else can rebuild", file=sys.stderr)
    into = Path(retrain_into) if retrain_into else retrained_dir(run_dir)
    weights = weights_of(run_dir, into)
    if train_if_missing and weights is None and (run_dir / "config.yaml").is_file():
        train_from_store(run_dir, into, data_root)
        weights = weights_of(run_dir, into)
    task, model, cfg = load_trained(run_dir, data_root, weights)
    batch = next(iter(task.train_batches().iter_epoch(0)))
    rows = capture_norm_inputs(model, lambda: task.loss(model, batch))
    if not rows:
        raise ValueError(f"--run {run_dir}: the model ({cfg.norm.name}) has no row-normalizing norm layers")
    curves = error_curves(rows)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for kind, color in (("prefix", "C3"), ("random subset", "C0")):
        per_layer = [dict(c[kind]) for c in curves.values()]
        for i, layer in enumerate(per_layer):
            ax.plot(list(layer), list(layer.values()), color=color, alpha=0.25, lw=0.8)
        ps = sorted(set.intersection(*(set(layer) for layer in per_layer)))
        mean = [sum(layer[p] for layer in per_layer) / len(per_layer) for p in ps]
        ax.plot(ps, mean, color=color, lw=2.2, marker="o", ms=4, label=f"{kind}: mean over {len(per_layer)} layers")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="p (share of features in the statistic)", ylabel="relative error of the partial RMS",
           title=f"Partial RMS error on {cfg.task.name} activations ({cfg.norm.name} model, step "
                 f"{_trained_steps(run_dir)})")
    save_figure(fig, [ax], out, "partial_error")

    shown = [p for p in (0.0625, 0.125, 0.25) if p in PARTIALS]
    header = ["layer", "N", *[f"prefix p={p * 100:g}%" for p in shown], *[f"random p={p * 100:g}%" for p in shown]]
    table = []
    for name, c in curves.items():
        prefix, rand = dict(c["prefix"]), dict(c["random subset"])
        table.append([f"`{name}`", str(rows[name].shape[-1]),
                      *[f"{prefix[p]:.3f}" if p in prefix else "n/a" for p in shown],
                      *[f"{rand[p]:.3f}" if p in rand else "n/a" for p in shown]])
    run_shown = shown_path(run_dir)
    where = ([f"**Warning: the run `{run_shown}` lies outside the repository; this note cannot be rebuilt from "
              "it.**", ""] if outside else [])
    body = [
        *where,
        f"Inputs of every norm layer of the trained model in `{run_shown}` ({cfg.task.name}, norm "
        f"{cfg.norm.name}), captured on one training batch (rows as each layer normalizes them, at most "
        "4096 per layer). Relative error |RMS(x[:k]) − RMS(x)| / RMS(x), mean over rows, for the prefix "
        "pRMSNorm uses and for a random subset of the same size:", "",
        *markdown_table(header, table), "",
        "Where the prefix error exceeds the random-subset error, the features at the start of the "
        "row are not representative of the whole (for conv features the prefix is the top rows of "
        "the image).", "",
        f"Weights: `{shown_path(weights)}`. Checkpoints are not committed (results/runs/**/*.pt): "
        f"`{rerun_command(run_dir, data_root)}` trains the run from its config.yaml into "
        f"`{shown_path(retrained_dir(run_dir))}` (git-ignored; the shared trainer, resuming there if "
        "killed), leaving the store's records as they are, then makes this note.",
    ]
    write_note(out, "partial_error", "Error of the partial RMS estimate vs k, on real activations", body,
               f"{command} --run {run_shown}" + (f" --data-root {data_root}" if data_root else ""))
    return {"curves": curves, "layers": {name: tuple(r.shape) for name, r in rows.items()}}


def _trained_steps(run_dir: Path) -> str:
    import json

    summary = Path(run_dir) / "summary.json"
    return str(json.loads(summary.read_text()).get("step", "?")) if summary.exists() else "?"
