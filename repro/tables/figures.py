"""Figures from collected runs and benchmark results: loss curves, validation curves, norm share
of step time, and kernel GB/s vs N per device (from results/bench/<device>/*.json).

Curves show the mean over a group's seeds with a band from the lowest to the highest seed, on the
steps every seed logged. A norm keeps its colour in every figure.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Optional

from .collect import Run, group_runs
from .render import norm_label, norm_order, norm_rank, norm_share

log = logging.getLogger(__name__)
NORM_COLORS = {norm: f"C{i}" for i, norm in enumerate(norm_order())}
# Evaluation curves: the first (split, metric) a task logs is drawn; runs without a validation
# split (CIFAR-10 as the paper trains it, on all 50k images) fall back to the test split.
EVAL_CURVES = (("val", "val/bleu"), ("val", "val/acc"), ("test", "test/bleu"), ("test", "test/acc"),
               ("val", "val/loss"))


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _color(norm: str, partial: Optional[float]) -> str:
    return NORM_COLORS.get(norm, "k")


def _linestyle(partial: Optional[float]) -> str:
    return "-" if partial is None else "--"


def seed_curves(group: list[Run], key: str, split: str):
    """(steps, mean, low, high) over the steps every seed logged; None when none did."""
    per_run = [dict(run.series(key, split)) for run in group]
    per_run = [c for c in per_run if c]
    if not per_run:
        return None
    steps = sorted(set.intersection(*(set(c) for c in per_run)))
    if not steps:
        return None
    values = [[c[s] for c in per_run] for s in steps]
    return (steps, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values])


def _by_task(runs: list[Run]) -> dict[str, dict]:
    tasks: dict[str, dict] = defaultdict(dict)
    groups = group_runs(r for r in runs if r.rows and r.status == "completed")
    for key in sorted(groups, key=_norm_rank):
        tasks[key[0]][key] = groups[key]
    return dict(sorted(tasks.items()))


def _norm_rank(key: tuple) -> tuple:
    _, norm, partial = key
    return (norm_rank(norm), norm, partial or 0.0)


def plot_curves(runs: list[Run], path: Path, curves: tuple[tuple[str, str], ...], title: str) -> Optional[Path]:
    """One panel per task: the first (split, metric) of `curves` the task logs, over steps, one
    line per norm."""
    tasks = {}
    for task, groups in _by_task(runs).items():
        found = next(((split, m) for split, m in curves
                      if any(run.series(m, split) for g in groups.values() for run in g)), None)
        if found:
            tasks[task] = (*found, groups)
    if not tasks:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.4, 5.2 * len(tasks)), 4.0), squeeze=False)
    for ax, (task, (split, metric, groups)) in zip(axes[0], tasks.items()):
        for (_, norm, partial), group in groups.items():
            curve = seed_curves(group, metric, split)
            if curve is None:
                continue
            steps, mean, low, high = curve
            color = _color(norm, partial)
            ax.plot(steps, mean, color=color, ls=_linestyle(partial), lw=1.5,
                    label=f"{norm_label(norm, partial)} (n={len(group)})", marker="o" if len(steps) < 12 else None, ms=3)
            if len(group) > 1:
                ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)
        ax.set(title=task, xlabel="step", ylabel=metric)
        if metric.endswith("loss"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title + " (mean over seeds, band: min-max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_norm_share(runs: list[Run], path: Path) -> Optional[Path]:
    """Per task, the share of step time spent in norm layers, per norm (mean ± std over seeds)."""
    tasks = {}
    for task, groups in _by_task(runs).items():
        bars = []
        for (_, norm, partial), group in groups.items():
            shares = [100 * s for s in (norm_share(r) for r in group) if s is not None]
            if shares:
                mean = sum(shares) / len(shares)
                std = (sum((s - mean) ** 2 for s in shares) / (len(shares) - 1)) ** 0.5 if len(shares) > 1 else 0.0
                bars.append((norm_label(norm, partial), mean, std, _color(norm, partial), len(shares)))
        if bars:
            tasks[task] = bars
    if not tasks:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.4, 4.8 * len(tasks)), 4.2), squeeze=False)
    for ax, (task, bars) in zip(axes[0], tasks.items()):
        labels, means, stds, colors, counts = zip(*bars)
        ax.bar(range(len(bars)), means, yerr=stds, color=colors, capsize=3)
        for i, (m, n) in enumerate(zip(means, counts)):
            ax.annotate(f"{m:.1f}%\nn={n}", (i, m), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 3), textcoords="offset points")
        ax.set_xticks(range(len(bars)), labels, rotation=25, ha="right", fontsize=8)
        ax.set(title=task, ylabel="norm fwd+bwd / step time (%)")
        ax.set_ylim(0, max(m + s for m, s in zip(means, stds)) * 1.3)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Norm layers' share of training step time (sampled steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_bench(bench_root: Path) -> list[tuple[dict, list[dict]]]:
    """(meta, records) of every repro-bench JSON under bench_root/<device>/ (full runs before
    quick ones, so a device's full grid is drawn when it has one)."""
    found = []
    for device_dir in sorted(p for p in Path(bench_root).glob("*") if p.is_dir()):
        files = sorted(device_dir.glob("*.json"), key=lambda p: ("quick" in p.name, p.name))
        for path in files[:1]:
            data = json.loads(path.read_text())
            if "meta" in data and "records" in data:
                found.append((data["meta"], data["records"]))
    return found


def plot_bench(bench_root: Path, path: Path) -> Optional[Path]:
    """Kernel GB/s vs N, one row per device, one panel per pass; per op the fastest backend at
    each N (largest row count measured), with the device's copy bandwidth as a ceiling."""
    benches = load_bench(bench_root)
    if not benches:
        return None
    plt = _plt()
    passes = list(dict.fromkeys(r["pass"] for _, records in benches for r in records))
    fig, axes = plt.subplots(len(benches), len(passes), figsize=(4.4 * len(passes), 3.4 * len(benches)),
                             squeeze=False)
    for i, (meta, records) in enumerate(benches):
        ok = [r for r in records if r.get("status") == "ok" and r.get("gbps")]
        dtype = ok[0]["dtype"] if ok else None
        for j, pass_ in enumerate(passes):
            ax = axes[i][j]
            best: dict[tuple, tuple] = {}
            for r in ok:
                if r["dtype"] != dtype or r["pass"] != pass_:
                    continue
                key = (r["label"], r["N"])
                if key not in best or (r["M"], r["gbps"]) > best[key][:2]:
                    best[key] = (r["M"], r["gbps"], r["backend"])
            for k, label in enumerate(dict.fromkeys(lbl for lbl, _ in best)):
                pts = sorted((n, v[1]) for (lbl, n), v in best.items() if lbl == label)
                ax.plot(*zip(*pts), marker="o", ms=3, color=f"C{k}", label=label)
            if meta.get("copy_gbps"):
                ax.axhline(meta["copy_gbps"], color="grey", ls="--", lw=1, label="copy")
            ax.set_xscale("log", base=2)
            ax.set(title=f"{meta.get('device', '?')}: {pass_} ({dtype})", xlabel="N (row length)",
                   ylabel="GB/s (best backend)", ylim=(0, None))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Norm kernels: achieved bandwidth vs row length (repro-bench)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(runs: list[Run], out: Path, bench_root: Optional[Path] = None) -> list[Path]:
    out = Path(out) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    made = [
        plot_curves(runs, out / "loss_curves.png", (("train", "train/loss"),), "Training loss"),
        plot_curves(runs, out / "val_curves.png", EVAL_CURVES, "Evaluation metric"),
        plot_norm_share(runs, out / "norm_share.png"),
    ]
    if bench_root is not None and Path(bench_root).is_dir():
        made.append(plot_bench(bench_root, out / "kernel_gbps.png"))
    return [p for p in made if p is not None]
