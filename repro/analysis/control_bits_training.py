"""The control-bits failure in training: what it costs a model when a few large features of its
norm inputs sit inside or outside pRMSNorm's prefix, as a function of p.

control_bits.py measures the estimate's error on constructed rows. Here a small classifier is
trained with it: an MLP whose hidden layers are Linear -> fixed gain -> (p)RMSNorm -> ReLU, where
the fixed gain makes `controls` channels of every norm input `magnitude` times larger than the
rest, as the few large "control" features of trained networks are. The channels sit at the head
of the row (inside every prefix), at its tail (outside every prefix short of p = 1), or nowhere
(gain 1 everywhere, the baseline). Each (p, layout) is trained from the same seeds for the same
steps; the note reports the final training loss, the test accuracy, and the partial-RMS error
the drift monitor would log on the trained model's first norm input.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from repro.nn import RMSNorm
from repro.track.drift import row_stats
from repro.util import markdown_table, mean_std

from .common import pyplot, save_figure, write_note
from .control_bits import control_positions

LAYOUTS = ("none", "head", "tail")
PARTIALS = (0.0625, 0.125, 0.25, 1.0)


@dataclass(frozen=True)
class Setup:
    steps: int = 600
    batch: int = 128
    lr: float = 1e-3
    hidden: int = 256
    depth: int = 2
    controls: int = 8
    magnitude: float = 16.0
    seeds: tuple[int, ...] = (1, 2)


def control_gain(dim: int, controls: int, magnitude: float, layout: str) -> Tensor:
    """Per-channel gain: `magnitude` on the control channels placed by `layout`, 1 elsewhere."""
    gain = torch.ones(dim)
    if layout != "none":
        gain[control_positions(dim, controls, layout)] = magnitude
    return gain


class ControlBitMLP(nn.Module):
    """x -> [Linear -> * gain -> (p)RMSNorm -> ReLU] * depth -> Linear -> logits."""

    def __init__(self, in_dim: int, classes: int, hidden: int, depth: int, partial: float, gain: Tensor):
        super().__init__()
        dims = [in_dim] + [hidden] * depth
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.norms = nn.ModuleList(RMSNorm(hidden, partial=partial) for _ in range(depth))
        self.head = nn.Linear(hidden, classes)
        self.register_buffer("gain", gain)  # fixed: the control channels stay large as training goes

    def forward(self, x: Tensor, norm_inputs: Optional[list] = None) -> Tensor:
        h = x.flatten(1)
        for linear, norm in zip(self.linears, self.norms):
            h = linear(h) * self.gain
            if norm_inputs is not None:
                norm_inputs.append(h.detach())
            h = torch.relu(norm(h))
        return self.head(h)


def train_one(data: dict, partial: float, layout: str, seed: int, setup: Setup) -> dict:
    """Train one model; returns its loss curve, final training loss, test accuracy and the
    partial-RMS error on its first norm input (test images)."""
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    classes = int(torch.cat([y_train, y_test]).max()) + 1
    torch.manual_seed(seed)
    gain = control_gain(setup.hidden, setup.controls, setup.magnitude, layout)
    model = ControlBitMLP(x_train[0].numel(), classes, setup.hidden, setup.depth, partial, gain)
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    order = torch.Generator().manual_seed(seed)  # the same batches for every (p, layout) of a seed
    losses = []
    for _ in range(setup.steps):
        idx = torch.randint(len(x_train), (setup.batch,), generator=order)
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    correct, inputs = 0, []
    with torch.no_grad():
        for start in range(0, len(x_test), 1000):
            logits = model(x_test[start:start + 1000], inputs if start == 0 else None)
            correct += int((logits.argmax(-1) == y_test[start:start + 1000]).sum())
    tail = max(1, setup.steps // 10)
    return {"losses": losses, "final_loss": sum(losses[-tail:]) / tail, "test_acc": correct / len(x_test),
            "partial_rel_err": row_stats(inputs[0], partial).get("partial_rel_err", 0.0)}


def measure(data: dict, setup: Setup = Setup(), partials=PARTIALS, layouts=LAYOUTS) -> dict:
    runs = {}
    cases = [(p, layout, seed) for p in partials for layout in layouts for seed in setup.seeds]
    for p, layout, seed in tqdm(cases, desc="control-bits training", unit="run"):
        runs[(p, layout, seed)] = train_one(data, p, layout, seed, setup)
    return {"runs": runs, "setup": setup, "partials": tuple(partials), "layouts": tuple(layouts)}


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean, std = mean_std(values)
    return mean, std or 0.0  # one seed: an error bar of 0 rather than none


def summarize(results: dict) -> dict:
    """(p, layout) -> mean and std over seeds of final_loss, test_acc, partial_rel_err."""
    seeds = results["setup"].seeds
    return {(p, layout): {key: _mean_std([results["runs"][(p, layout, s)][key] for s in seeds])
                          for key in ("final_loss", "test_acc", "partial_rel_err")}
            for p in results["partials"] for layout in results["layouts"]}


def load_cifar(data_root: str) -> dict:
    from repro.data.cifar10 import load_cifar10, prepare_cifar10

    # decoded JPEGs are cached where repro-train caches them (conf/data/cifar10.yaml's cache_dir)
    cache_dir = os.environ.get("REPRO_CACHE", "~/.cache/repro")
    splits = prepare_cifar10(load_cifar10(data_root, cache_dir, download=False))
    return {"train": splits.train, "test": splits.test}


def run(out: Path, data: dict, setup: Setup = Setup(), data_name: str = "CIFAR-10",
        command: str = "repro-tables analyze control-bits-training") -> dict:
    results = measure(data, setup)
    table = summarize(results)
    s, partials, layouts = results["setup"], results["partials"], results["layouts"]
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"none": "C7", "head": "C2", "tail": "C3"}
    for layout in layouts:
        mean, std = zip(*[table[(p, layout)]["test_acc"] for p in partials])
        left.errorbar(partials, mean, yerr=std, marker="o", ms=3, capsize=3, color=colors[layout], label=layout)
    left.set(xlabel="p (share of features in the statistic)", ylabel="test accuracy",
             title=f"after {s.steps} steps, mean ± std over {len(s.seeds)} seeds")
    left.set_xscale("log", base=2)
    p_low = min(partials)
    window = max(1, s.steps // 30)
    for layout in layouts:
        curve = torch.tensor(results["runs"][(p_low, layout, s.seeds[0])]["losses"])
        smooth = curve.unfold(0, window, window).mean(-1) if len(curve) >= window else curve
        right.plot([(i + 1) * window for i in range(len(smooth))], smooth, color=colors[layout], label=layout)
    right.set(xlabel="step", ylabel="training loss", title=f"p = {p_low * 100:g}%, seed {s.seeds[0]}")
    save_figure(fig, (left, right), out, "control_bits_training", legend_title="control channels at")

    def cell(p, layout, key, fmt):
        mean, std = table[(p, layout)][key]
        return f"{mean:{fmt}} ± {std:{fmt}}"

    header = ["p", *[f"{layout}: test acc" for layout in layouts], *[f"{layout}: final loss" for layout in layouts],
              *[f"{layout}: partial err" for layout in layouts]]
    rows = [[f"{p * 100:g}%", *[cell(p, la, "test_acc", ".3f") for la in layouts],
             *[cell(p, la, "final_loss", ".3f") for la in layouts],
             *[cell(p, la, "partial_rel_err", ".2f") for la in layouts]] for p in partials]
    acc = {key: value["test_acc"][0] for key, value in table.items()}
    # cost in accuracy points against the baseline at the same p; at p = 1 the statistic sees every
    # channel, so what the large channels cost there is not pRMSNorm's doing
    cost = {layout: {p: 100 * (acc[(p, "none")] - acc[(p, layout)]) for p in partials} for layout in layouts}
    full = 1.0 if 1.0 in partials else None
    low = [p for p in partials if p < 1]
    body = [
        f"An MLP on {data_name} (flattened inputs; {s.depth} hidden layers of {s.hidden}: Linear → fixed "
        f"gain → (p)RMSNorm → ReLU), where the gain makes {s.controls} of the {s.hidden} channels of every "
        f"norm input {s.magnitude:g}× larger: at the head of the row (inside every prefix), at its tail "
        f"(outside every prefix but p = 100 %), or nowhere (the baseline). Adam {s.lr:g}, batch {s.batch}, "
        f"{s.steps} steps, seeds {', '.join(map(str, s.seeds))} (the same batches for every cell of a seed). "
        "Final loss: mean training loss over the last tenth of the steps. Partial err: relative error of "
        "the partial RMS against the full RMS on the trained model's first norm input (test images), as "
        "the drift monitor logs it. Mean ± std over seeds:", "",
        *markdown_table(header, rows), "",
        "Test-accuracy cost of the control channels (points: baseline minus layout at the same p, mean "
        "over seeds) at p = " + ", ".join(f"{p * 100:g}%" for p in partials) + ": " + "; ".join(
            f"{layout}: {', '.join(f'{cost[layout][p]:+.1f}' for p in partials)}"
            for layout in layouts if layout != "none") + "."
        + ("" if full is None else
           " At p = 100 % the statistic sees every channel, so that column is what the large channels cost "
           "RMSNorm itself; what pRMSNorm's prefix adds is the difference: " + "; ".join(
               f"{layout}: {', '.join(f'{cost[layout][p] - cost[layout][full]:+.1f}' for p in low)}"
               for layout in layouts if layout != "none")
           + f" (p = {', '.join(f'{p * 100:g}%' for p in low)}; compare with the seed spread in the table)."),
        "",
        "A short budget on a CPU, one small model: it shows the direction and rough size of the effect, "
        "not what it would be in a Transformer trained to convergence.",
    ]
    write_note(out, "control_bits_training", "pRMSNorm's control-bits failure in training", body, command)
    return results
