"""Turning benchmark records into a terminal table, JSON, CSV and a PNG figure."""
from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

from .backends import OP_FAMILIES
from .suite import PASSES

RECORD_FIELDS = ("op", "partial", "label", "M", "N", "dtype", "pass", "backend", "status", "reason",
                 "ms", "ms_p20", "ms_p80", "gbps", "pct_copy", "bytes", "pool", "reps", "timing")
CELL = {"n/a": "n/a", "failed": "FAIL", "skipped": "skip"}
NOISY_SPREAD = 0.5  # p80 - p20 above this fraction of the median marks a time as noisy


def _key(r: dict) -> tuple:
    return (r["label"], r["M"], r["N"], r["dtype"], r["pass"])


def _fmt_us(r: dict) -> str:
    us = r["ms"] * 1e3
    text = f"{us:.2f}" if us < 100 else f"{us:.1f}" if us < 10_000 else f"{us:.0f}"
    return text + ("~" if _noisy(r) else "")


def _noisy(r: dict) -> bool:
    return r["ms_p80"] - r["ms_p20"] > NOISY_SPREAD * r["ms"]


def _fmt_ratio(r: Optional[float]) -> str:
    return f"{r:.2f}x" if r else "-"


def geomean(values: Iterable[float]) -> Optional[float]:
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _grid(rows: list[list[str]], header: list[str], right_from: int) -> str:
    """Columns padded to their widest cell; text columns left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.rjust(w) if i >= right_from else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *map(line, rows)])


def render_table(records: list[dict], meta: dict) -> str:
    """Rows op/shape/dtype/pass, one latency column per backend, then the best backend's GB/s
    and our kernels' speedup over native and over the fastest other backend."""
    backends = [b for b, info in meta["backends"].items() if info["available"]]
    ours = meta.get("ours")
    by_case: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in records:
        by_case[_key(r)][r["backend"]] = r
    order = sorted(by_case, key=lambda k: _row_order(k, by_case[k]))

    header = ["op", "M", "N", "dtype", "pass", *(f"{b} us" for b in backends), "best", "GB/s", "%copy"]
    if ours:
        header += [f"{ours} vs native", f"{ours} vs best other"]
    rows = []
    for key in order:
        cells = by_case[key]
        if all(r["status"] == "skipped" for r in cells.values()):
            continue  # counted under "not timed" below; a block of 'skip' rows says nothing more
        ok = {b: r["ms"] for b, r in cells.items() if r["status"] == "ok"}
        row = [key[0], str(key[1]), str(key[2]), key[3], key[4]]
        row += [_fmt_us(cells[b]) if b in ok else CELL.get(cells[b]["status"], "?") if b in cells else "" for b in backends]
        best = min(ok, key=ok.get) if ok else None
        row += [best or "-",
                f"{cells[best]['gbps']:.1f}" if best else "-",
                f"{cells[best]['pct_copy']:.0f}" if best and cells[best]["pct_copy"] else "-"]
        if ours:
            others = [ms for b, ms in ok.items() if b != ours]
            row += [_fmt_ratio(ok["native"] / ok[ours] if "native" in ok and ours in ok else None),
                    _fmt_ratio(min(others) / ok[ours] if others and ours in ok else None)]
        rows.append(row)

    copy = f"{meta['copy_gbps']:.1f} GB/s" if meta.get("copy_gbps") else "not measured"
    lines = [
        f"repro-bench on {meta['device']} ({meta['device_type']}, {meta['threads']} threads), "
        f"torch {meta['torch']}, copy bandwidth {copy}",
        f"times: {meta['timing']}; us = microseconds per call; ~ = noisy (p20-p80 spread > "
        f"{NOISY_SPREAD:.0%} of the median)",
        f"GB/s: {meta['bytes_model']}; %copy: of the copy bandwidth; 'X vs Y' = Y time / X time (>1: X is faster)",
        *(f"not available: {b}: {info['reason']}" for b, info in meta["backends"].items() if not info["available"]),
        *([f"allocator: {meta['cpu_allocator']}"] if meta.get("cpu_allocator") else []),
        *_load_warning(meta),
        "",
        _grid(rows, header, right_from=1),
    ]
    lines += _failure_notes(records)
    return "\n".join(lines)


def _load_warning(meta: dict) -> list[str]:
    """A warning line when other processes kept the host's CPUs busy during the run."""
    load = max((v for v in meta.get("load_average", {}).values() if v is not None), default=None)
    cpus = meta.get("logical_cpus")
    if load is None or not cpus or load <= cpus:
        return []
    hint = "; try --threads 1" if meta["device_type"] == "cpu" and meta["threads"] > 1 else ""
    return [f"WARNING: load average {load:.1f} on {cpus} CPUs: other processes competed for the CPUs, "
            f"times are unreliable{hint}"]


def _row_order(key: tuple, cells: dict[str, dict]) -> tuple:
    """dtype, N, M, then LayerNorm, RMSNorm, pRMSNorm by falling p, then the passes in order."""
    label, m, n, dtype, pass_ = key
    r = next(iter(cells.values()))
    return (dtype, n, m, OP_FAMILIES.index(r["op"]), -r["partial"], PASSES.index(pass_))


def _failure_notes(records: list[dict]) -> list[str]:
    """One line per distinct reason a backend failed or was skipped, with how many cases."""
    reasons: dict[tuple, int] = defaultdict(int)
    for r in records:
        if r["status"] in ("failed", "skipped"):
            reasons[(r["backend"], r["status"], r["reason"])] += 1
    if not reasons:
        return []
    return ["", "not timed:"] + [f"  {b}: {s} x{n}: {why}" for (b, s, why), n in sorted(reasons.items())]


def render_ln_summary(records: list[dict]) -> str:
    """RMSNorm's and pRMSNorm's speedup over LayerNorm per backend and pass: the paper's speed
    claim on this device (geometric mean over the shapes where both were timed)."""
    ms = {(r["backend"], r["pass"], r["label"], r["M"], r["N"], r["dtype"]): r["ms"]
          for r in records if r["status"] == "ok"}
    labels = list(dict.fromkeys(r["label"] for r in records if r["op"] != "layer_norm"))
    rows = []
    for backend, pass_ in dict.fromkeys((r["backend"], r["pass"]) for r in records):
        ratios = []
        for label in labels:
            pairs = [ms[(backend, pass_, "LayerNorm", *shape)] / t for (b, p, lab, *shape), t in ms.items()
                     if (b, p, lab) == (backend, pass_, label) and (backend, pass_, "LayerNorm", *shape) in ms]
            ratios.append(geomean(pairs))
        if any(ratios):
            rows.append([backend, pass_, *map(_fmt_ratio, ratios)])
    if not rows or not labels:
        return ""
    title = "speedup over LayerNorm (LayerNorm time / op time, geometric mean over shapes; >1: faster)"
    return title + "\n\n" + _grid(rows, ["backend", "pass", *labels], right_from=2)


# ---------------------------------------------------------------------------- files
def write_results(out_dir: Path, stem: str, meta: dict, records: list[dict]) -> list[Path]:
    """JSON (metadata + records), CSV (records) and the PNG figure; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path, png_path = (out_dir / f"{stem}.{ext}" for ext in ("json", "csv", "png"))
    json_path.write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in RECORD_FIELDS} for r in records)
    plot(png_path, meta, records)
    return [json_path, csv_path, png_path]


def plot(path: Path, meta: dict, records: list[dict]) -> None:
    """Latency and GB/s vs N per backend: one row of panels per op, two panels per pass.

    Only the first dtype of the grid is drawn (bf16 on a GPU); where several row counts share
    an N, the largest is drawn.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ok = [r for r in records if r["status"] == "ok"]
    dtype = records[0]["dtype"] if records else None
    labels = list(dict.fromkeys(r["label"] for r in records))
    passes = list(dict.fromkeys(r["pass"] for r in records))
    backends = [b for b, info in meta["backends"].items() if info["available"]]
    color = {b: f"C{i}" for i, b in enumerate(meta["backends"])}  # a backend keeps its colour in every panel
    fig, axes = plt.subplots(max(len(labels), 1), max(2 * len(passes), 1), squeeze=False,
                             figsize=(3.6 * 2 * max(len(passes), 1), 2.8 * max(len(labels), 1)))
    largest_m = defaultdict(int)
    for r in ok:
        if r["dtype"] == dtype:
            largest_m[r["N"]] = max(largest_m[r["N"]], r["M"])
    for i, label in enumerate(labels):
        for j, pass_ in enumerate(passes):
            lat, bw = axes[i][2 * j], axes[i][2 * j + 1]
            for backend in backends:
                pts = sorted((r["N"], r["ms"], r["gbps"]) for r in ok
                             if (r["label"], r["pass"], r["backend"], r["dtype"]) == (label, pass_, backend, dtype)
                             and r["M"] == largest_m[r["N"]])
                if pts:
                    n, t, g = zip(*pts)
                    lat.plot(n, t, marker="o", ms=3, color=color[backend], label=backend)
                    bw.plot(n, g, marker="o", ms=3, color=color[backend], label=backend)
            if meta.get("copy_gbps"):
                bw.axhline(meta["copy_gbps"], color="grey", ls="--", lw=1, label="copy")
            lat.set_title(f"{label} {pass_}: latency", fontsize=9)
            lat.set(ylabel="ms", yscale="log")
            lat.yaxis.set_minor_formatter(NullFormatter())
            bw.set_title(f"{label} {pass_}: GB/s", fontsize=9)
            bw.set(ylabel="GB/s", ylim=(0, None))
            for ax in (lat, bw):
                ax.set_xscale("log", base=2)
                ax.set_xlabel("N")
                ax.grid(alpha=0.3)
    legend = {}  # one legend for the figure: every backend that has a line in some panel
    for ax in axes.flat:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(legend.values(), legend.keys(), loc="upper right", ncol=len(legend), fontsize=8)
    fig.suptitle(f"repro-bench: {meta['device']} ({dtype}; {meta['date']})")
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.05, top=0.93, wspace=0.35, hspace=0.55)
    fig.savefig(path, dpi=90)
    plt.close(fig)
