"""What every analysis shares: a results folder, a figure, a note in Markdown."""
from __future__ import annotations

import datetime
import platform
from pathlib import Path

import torch


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, axes, out: Path, name: str, legend_title: str | None = None, legend_size: int = 8) -> Path:
    """A grid and a legend on every panel, then <out>/<name>.png (the figure is closed)."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(title=legend_title, fontsize=legend_size)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def write_note(out: Path, name: str, title: str, body: list[str], command: str) -> Path:
    """results/analysis/<name>.md: what was measured, the numbers, and the command that made it."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {title}", "", *body, "", f"![{name}]({name}.png)", "",
             f"Made by `{command}` on {stamp} (torch {torch.__version__}, {platform.machine()} CPU)."]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path

