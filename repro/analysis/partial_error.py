"""The error of pRMSNorm's partial RMS estimate vs k, on real activations of a trained model.

The inputs of every norm layer of a trained run's model are captured on one training batch (rows
as the layer normalizes them: the last dim, or for conv features each channel's H×W map), and for
each p the relative error |RMS(x[:k]) − RMS(x)| / RMS(x) is averaged over rows — the prefix the
layer would use, and, for contrast, a random subset of the same size (features permuted once),
which shows whether the position of the prefix matters beyond its size.

The weights: a run store's checkpoints/last.pt (git-ignored: results/runs/**/*.pt), or a
weights-only file given with --weights. The committed note reads a committed one,
results/analysis/checkpoints/cifar10_table10_cpu-prmsnorm-seed2.pt (the model's fp32 state_dict
of a committed Table 10 run at its final step, made from that run's checkpoint with
--save-weights), with its sha256 in the note, so it is rebuilt from the repository alone (plus the
shared data for the batch). --train-if-missing retrains a weightless store from its config.yaml
instead (another model than the run's: training is not bit-reproducible across code changes).
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
# The committed note's model: a committed Table 10 run and its weights, copied into the repository.
COMMITTED_RUN = "results/runs/cifar10_table10_cpu/cifar10_cnn_prmsnorm_seed2"
COMMITTED_WEIGHTS = "results/analysis/checkpoints/cifar10_table10_cpu-prmsnorm-seed2.pt"


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


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_weights(checkpoint: Path, dest: Path, run_dir: Optional[Path] = None) -> Path:
    """A weights-only copy of a repro checkpoint: {"model": its state_dict in fp32, "step",
    "epoch", "run"} (no optimizer, scheduler or RNG state), loadable with weights_only=True."""
    from repro.train import checkpoint as ckpt

    state = ckpt.load(checkpoint)
    weights = {"model": {k: v.detach().to(torch.float32).contiguous().clone() if v.is_floating_point() else v
                         for k, v in state["model"].items()},
               "step": int(state.get("step", -1)), "epoch": int(state.get("epoch", -1)),
               "run": shown_path(run_dir) if run_dir is not None else ""}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights, dest)
    return dest


def load_weights(path: Path) -> dict:
    """{"model": state_dict, "step": ...} of a weights-only file (save_weights) or of a full repro
    checkpoint."""
    from repro.train import checkpoint as ckpt

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:  # a weights-only file needs no pickled objects
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a full checkpoint (RNG states): the trainer's own loader
        return ckpt.load(path)
    if isinstance(state, dict) and "model" in state:
        return state
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return {"model": state}
    raise ValueError(f"--weights {path}: neither a state_dict nor a repro checkpoint")


def load_trained(run_dir: Path, data_root: Optional[str] = None, weights: Optional[Path] = None):
    """(task, model, cfg, weights state) of a finished run: its config.yaml rebuilt as repro-train
    builds it, the weights (default: its checkpoints/last.pt) loaded, the task's data set up on the
    CPU."""
    from omegaconf import OmegaConf

    from repro.tasks import build_task_and_model

    run_dir = Path(run_dir)
    path = weights or run_dir / "checkpoints" / "last.pt"
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"--run {run_dir}: no config.yaml (not a repro-train run store)")
    if not Path(path).is_file():
        if weights is not None:
            raise FileNotFoundError(f"--weights {weights}: no such file")
        raise FileNotFoundError(f"--run {run_dir}: no checkpoints/last.pt (checkpoints are not committed); "
                                f"train it from its config.yaml with: {rerun_command(run_dir, data_root)}")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if data_root:
        cfg.data.root = data_root
    task, model = build_task_and_model(cfg)
    state = load_weights(path)
    model.load_state_dict(state["model"])
    model.eval()
    task.setup(torch.device("cpu"))
    return task, model, cfg, state


def run(out: Path, run_dir: Path, data_root: Optional[str] = None, *, train_if_missing: bool = False,
        retrain_into: Optional[Path] = None, weights: Optional[Path] = None, save_weights_to: Optional[Path] = None,
        command: str = "repro-tables analyze partial-error") -> dict:
    """The note and figure of the run `run_dir`'s model. `weights`: a weights-only file (or
    checkpoint) instead of the run's checkpoints/last.pt; `save_weights_to`: first copy the run's
    checkpoint there as a weights-only file, and analyse that."""
    from repro.util.paths import REPO_ROOT

    run_dir = Path(run_dir)
    outside = not run_dir.resolve().is_relative_to(REPO_ROOT)
    if outside:
        print(f"warning: --run {run_dir} lies outside the repository ({REPO_ROOT}): the note will name a run "
              "nobody else can rebuild", file=sys.stderr)
    retrained = False
    if save_weights_to is not None:
        if weights is not None:
            raise ValueError("--weights and --save-weights: give one (--save-weights copies the run's checkpoint)")
        own = run_dir / "checkpoints" / "last.pt"
        if not own.is_file():
            raise FileNotFoundError(f"--save-weights: --run {run_dir} has no checkpoints/last.pt to copy")
        weights = save_weights(own, save_weights_to, run_dir)
    if weights is None:
        into = Path(retrain_into) if retrain_into else retrained_dir(run_dir)
        weights = weights_of(run_dir, into)
        if train_if_missing and (run_dir / "config.yaml").is_file():
            train_from_store(run_dir, into, data_root)
            weights = weights_of(run_dir, into)
        retrained = weights is not None and not Path(weights).resolve().is_relative_to(run_dir.resolve())
    task, model, cfg, state = load_trained(run_dir, data_root, weights)
    weights = Path(weights) if weights is not None else run_dir / "checkpoints" / "last.pt"
    batch = next(iter(task.train_batches().iter_epoch(0)))
    rows = capture_norm_inputs(model, lambda: task.loss(model, batch))
    if not rows:
        raise ValueError(f"--run {run_dir}: the model ({cfg.norm.name}) has no row-normalizing norm layers")
    curves = error_curves(rows)
    partials = {name: norm_partial(module) for name, module in model.named_modules() if name in rows}
    step = state.get("step")
    step = int(step) if step is not None else _trained_steps(run_dir)

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
           title=f"Partial RMS error on {cfg.task.name} activations ({cfg.norm.name} model, step {step})")
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
    made_by = (f"{command} --run {run_shown}" + (f" --weights {shown_path(weights)}" if weights != run_dir /
                                                  "checkpoints" / "last.pt" else "")
               + (f" --data-root {data_root}" if data_root else ""))
    body = [
        *where,
        f"Inputs of every norm layer of the trained model of `{run_shown}` ({cfg.task.name}, norm "
        f"{cfg.norm.name}{_partials_of(cfg)}), captured on one training batch (the first of epoch 0 in the "
        f"run's data order, seed {cfg.seed}; rows as each layer normalizes them, at most 4096 per layer; "
        "model in eval mode, fp32 on the CPU). Relative error |RMS(x[:k]) − RMS(x)| / RMS(x), mean over rows, "
        "for the prefix pRMSNorm uses and for a random subset of the same size:", "",
        *markdown_table(header, table), "",
        *_highlights(curves, partials), "",
        "Where the prefix error exceeds the random-subset error, the features at the start of the "
        "row are not representative of the whole (for conv features the prefix is the top rows of "
        "the image).", "",
        *_weights_note(run_dir, weights, state, step, retrained, data_root, made_by),
    ]
    write_note(out, "partial_error", "Error of the partial RMS estimate vs k, on real activations", body, made_by)
    return {"curves": curves, "layers": {name: tuple(r.shape) for name, r in rows.items()},
            "weights": weights, "sha256": sha256_of(weights)}


def _partials_of(cfg) -> str:
    """", p = 12.5 % (the 10-way layer's norm: p = 100 %)" for a pRMSNorm model."""
    if cfg.norm.name != "prmsnorm":
        return ""
    final = cfg.model.get("final_partial")
    return (f", p = {float(cfg.norm.partial) * 100:g} %"
            + (f"; the 10-way layer's norm: p = {float(final) * 100:g} %" if final is not None else ""))


def norm_partial(module: nn.Module) -> Optional[float]:
    """The p a norm layer normalizes with (pRMSNorm, or a conv norm built on it); None otherwise."""
    found = getattr(module, "partial", None)
    if found is None:
        found = (getattr(getattr(module, "normalize", None), "keywords", None) or {}).get("partial")
    return float(found) if found is not None else None


def _highlights(curves: dict, partials: dict) -> list[str]:
    """One line: over the layers that normalize with a partial p < 1 (`partials`: {layer: p}), at
    that p, the prefix and random-subset errors' range and mean."""
    used = {name: p for name, p in partials.items() if p is not None and p < 1 and name in curves}
    if not used or len(set(used.values())) != 1 or next(iter(used.values())) not in PARTIALS:
        return []
    p = next(iter(used.values()))
    found = {kind: [dict(curves[name][kind])[p] for name in used if p in dict(curves[name][kind])]
             for kind in ("prefix", "random subset")}
    means = {kind: sum(v) / len(v) for kind, v in found.items()}

    def summary(kind):
        return f"{min(found[kind]):.3f}-{max(found[kind]):.3f} (mean {means[kind]:.3f})"

    others = [name for name in curves if name not in used]
    return [f"At the p = {p * 100:g} % the model normalizes with, over its {len(found['prefix'])} layers that use "
            f"it{' (not ' + ', '.join(f'`{n}`' for n in others) + ', which uses the full RMS)' if others else ''}, "
            f"the prefix error is {summary('prefix')}, a random subset's of the same size "
            f"{summary('random subset')}: the prefix is {means['prefix'] / means['random subset']:.1f}x as far "
            "off on average."]


def _weights_note(run_dir: Path, weights: Path, state: dict, step, retrained: bool, data_root, made_by) -> list[str]:
    """Where the weights come from, and how to rebuild the note."""
    import json

    from repro.util.paths import REPO_ROOT

    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    committed = Path(weights).resolve().is_relative_to(REPO_ROOT) and not _ignored(weights)
    params = sum(t.numel() for t in state["model"].values())
    if retrained:
        return [f"Weights: `{shown_path(weights)}`, retrained from the store's config.yaml (not the run's own "
                "weights; checkpoints are not committed: results/runs/**/*.pt). "
                f"`{rerun_command(run_dir, data_root)}` trains it into `{shown_path(retrained_dir(run_dir))}` "
                "(git-ignored; the shared trainer, resuming there if killed), leaving the store's records as "
                "they are, then makes this note."]
    final = summary.get("step") == step and summary.get("status") == "completed"
    acc = summary.get("test/acc")
    what = (f"the run's final step {step} (its summary.json: "
            + (f"test accuracy {acc * 100:.2f} %, " if acc is not None else "")
            + f"precision {summary.get('precision', '?')})" if final else f"step {step}")
    lines = [f"Weights: `{shown_path(weights)}` (sha256 `{sha256_of(weights)}`, "
             f"{Path(weights).stat().st_size / 1e6:.2f} MB): the model's {params:,} parameters at {what}"]
    if committed:
        lines[0] += (", an fp32 state_dict without optimizer state, committed so this note is rebuilt from the "
                     "repository (the run's checkpoints/last.pt is not committed: results/runs/**/*.pt; this "
                     f"copy was made from it with `--save-weights {shown_path(weights)}`). Rebuild the note "
                     f"with `{made_by}`: the model is built from the run's config.yaml, the weights loaded, and "
                     "the batch read from the task's data (the same numbers up to float rounding"
                     + ("; tests/test_partial_error.py checks the file's sha256 and recomputes the table"
                        if shown_path(weights) == COMMITTED_WEIGHTS else "") + ").")
    else:
        lines[0] += (f", not committed; `{made_by}` makes this note where that file exists.")
    return lines


def _ignored(path: Path) -> bool:
    import subprocess

    from repro.util.paths import REPO_ROOT

    try:
        return subprocess.run(["git", "check-ignore", "-q", str(Path(path).resolve())], cwd=REPO_ROOT,
                              capture_output=True).returncode == 0
    except OSError:
        return False


def _trained_steps(run_dir: Path) -> str:
    import json

    summary = Path(run_dir) / "summary.json"
    return str(json.loads(summary.read_text()).get("step", "?")) if summary.exists() else "?"
