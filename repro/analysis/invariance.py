"""Invariance of LayerNorm and RMSNorm, measured: how much the output of norm(x Wᵀ) moves when the
input or the weight matrix is re-scaled or re-centered (the paper's Table 1, in numbers).

For each transformation and magnitude the relative change ‖y' − y‖ / ‖y‖ is computed with the
repro.nn modules (gain 1, the default eps) in float64, so what is left is the layers' own
behaviour, eps included:
- weight re-scaling W → δW and single-case input re-scaling x_i → δ_i x_i (δ_i per row),
- weight re-centering W → W + γ (every weight shifted by γ: each summed input of a row moves by
  the same γ Σx), and a direct shift of the summed inputs a → a + c.
Theory says: both norms are invariant to re-scaling (up to eps), LayerNorm to re-centering,
RMSNorm not: for a zero-mean row of RMS r, shifted by c, RMSNorm's output becomes
(a + c)/√(r² + c²), a relative change √(2 − 2r/√(r² + c²)).
"""
from __future__ import annotations

from pathlib import Path

import torch

from repro.nn import LayerNorm, RMSNorm
from repro.util import markdown_table

from .common import pyplot, save_figure, write_note

SCALES = tuple(10.0 ** e for e in (-4, -3, -2, -1, -0.5, 0.5, 1, 2, 3, 4))
SHIFTS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def relative_change(y: torch.Tensor, y2: torch.Tensor) -> float:
    return ((y2 - y).norm() / y.norm()).item()


def norms(dim: int) -> dict:
    return {"LayerNorm": LayerNorm(dim).double(), "RMSNorm": RMSNorm(dim).double()}


def measure(rows: int = 256, d_in: int = 256, dim: int = 512, seed: int = 0) -> dict:
    """{transformation: {norm: [(magnitude, relative change)]}} on random x, W (summed inputs of
    unit scale), float64."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d_in, generator=gen, dtype=torch.float64)
    w = torch.randn(dim, d_in, generator=gen, dtype=torch.float64) / d_in ** 0.5
    per_row = torch.rand(rows, 1, generator=gen, dtype=torch.float64) + 0.5  # δ_i in [0.5, 1.5)
    cases = {
        "weight re-scaling (W -> δW)": (SCALES, lambda s: (x, s * w)),
        "input re-scaling (x_i -> δ·δ_i x_i)": (SCALES, lambda s: (s * per_row * x, w)),
        "weight re-centering (W -> W + γ)": (SHIFTS, lambda g: (x, w + g)),
        "summed-input shift (a -> a + c)": (SHIFTS, None),
    }
    results = {}
    with torch.no_grad():
        for name, norm in norms(dim).items():
            y = norm(x @ w.T)
            for case, (grid, transform) in cases.items():
                points = []
                for m in grid:
                    if transform is None:
                        # c in units of the summed inputs' RMS, so the curve reads as "shift / scale"
                        a = x @ w.T
                        a2 = a + m * a.square().mean().sqrt()
                    else:
                        x2, w2 = transform(m)
                        a2 = x2 @ w2.T
                    points.append((m, relative_change(y, norm(a2))))
                results.setdefault(case, {})[name] = points
    return results


def run(out: Path, command: str = "repro-tables analyze invariance") -> dict:
    results = measure()
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"LayerNorm": "C4", "RMSNorm": "C5"}
    for ax, kind in zip(axes, ("re-scaling", "shift")):
        for case, per_norm in results.items():
            if (kind == "re-scaling") != ("re-scaling" in case):
                continue
            dashed = "weight" not in case
            for norm, points in per_norm.items():
                m, change = zip(*points)
                # zero change cannot sit on a log axis; float64 rounding is the floor anyway
                ax.plot(m, [max(c, 1e-17) for c in change], color=styles[norm], ls="--" if dashed else "-",
                        marker="o", ms=3, label=f"{norm}: {case}")
        ax.set(xscale="log", yscale="log", ylabel="relative output change ‖y′−y‖/‖y‖",
               xlabel="scale factor δ" if kind == "re-scaling" else "shift (γ, or c in units of RMS(a))",
               title=f"{kind}: LayerNorm vs RMSNorm (float64, default eps)")
    save_figure(fig, axes, out, "invariance", legend_size=7)

    worst = {norm: max(c for case, per in results.items() if "re-scaling" in case for m, c in per[norm] if m >= 1)
             for norm in ("LayerNorm", "RMSNorm")}
    shift_ln = max(c for case, per in results.items() if "re-scaling" not in case for _, c in per["LayerNorm"])
    shift_rms = dict(results["summed-input shift (a -> a + c)"]["RMSNorm"])[1.0]
    header = ["transformation", "magnitude", "LayerNorm change", "RMSNorm change"]
    rows = []
    for case, per_norm in results.items():
        for (m, ln), (_, rms) in zip(per_norm["LayerNorm"], per_norm["RMSNorm"]):
            if m in (1e-4, 1e-2, 10 ** 0.5, 1e2, 1e4, 0.1, 1.0, 10.0):
                rows.append([case, f"{m:g}", f"{ln:.1e}", f"{rms:.1e}"])
    body = [
        "Relative change of the normalized output ‖y′−y‖/‖y‖ when the input x or the weight matrix W "
        "of y = norm(x Wᵀ) is transformed (256 rows, 256 → 512 features, summed inputs of unit "
        "scale, float64, gain 1, default eps: LayerNorm 1e-5, RMSNorm 1e-6 inside the root).", "",
        *markdown_table(header, rows), "",
        f"Reading: re-scaling up (δ ≥ 1) moves the output by at most {worst['LayerNorm']:.1e} "
        f"(LayerNorm) and {worst['RMSNorm']:.1e} (RMSNorm). What is left is eps: the output is "
        "a/√(ms + eps), so a change of ms by δ² changes it by about eps/(2·ms) — for unit-scale "
        "inputs 5e-6 with LayerNorm's eps 1e-5 and 5e-7 with RMSNorm's 1e-6 — and down-scaling "
        "until ms·δ² nears eps (δ ≤ 1e-2 here) breaks the invariance for both. "
        "Shifting every summed input of a row by the same amount (directly, or by re-centering the "
        f"weight matrix) leaves LayerNorm unchanged (≤ {shift_ln:.0e}, float64 rounding) and moves "
        "RMSNorm's output by √(2 − 2r/√(r²+c²)) for a zero-mean row of RMS r shifted by c "
        f"(measured {shift_rms:.3f} at c = RMS(a), theory {2 ** 0.5 * (1 - 2 ** -0.5) ** 0.5:.3f}): "
        "RMSNorm gives up re-centering invariance, which is why the mean of its inputs is worth "
        "monitoring (`track.drift`).",
    ]
    write_note(out, "invariance", "Invariance of LayerNorm and RMSNorm, measured", body, command)
    return results
