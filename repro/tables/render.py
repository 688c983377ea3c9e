"""Table 4 (translation) and Table 10 (CIFAR-10) from collected runs: Markdown, CSV and LaTeX.

Runs are grouped by (task, norm, partial); each cell is mean ± sample std over the group's seeds,
with the seed count shown. A cell no run measured says "missing": nothing is filled in. The
paper's published numbers are printed beside each table, and one verdict line per claim:

- quality: Δ against LayerNorm with its 95 % Welch t-interval (repro.tables.stats) and n; the
  call is better (interval all on the better side of 0), kept (interval at most 0.5 points
  worse), worse (interval all more than 0.5 worse) or inconclusive (anything else, or n < 2);
  runs trained on less than the paper's budget, or another data set, say "not comparable to the
  paper's numbers" beside the call.
- speed: LayerNorm / norm time ratios with their interval; a speed verdict only from runs whose
  host was recorded as uncontended, otherwise the line says the speed was not measured under
  controlled conditions.
- the no-norm row, where the paper says its model failed to train: whether ours trained, by the
  rule of repro.tables.outcome; runs of the depth study (experiment=multi30k_nonorm_deep) are
  kept out of Table 4's rows and get their own section (repro.tables.depth).

Timing: `time/step_ms` is ms per optimizer step, which is numerically seconds per 1k steps (the
unit of the paper's Table 4). It is the mean over the logged intervals *after the first*, since
the first interval carries one-off costs (allocator warm-up, cuDNN autotuning, compilation); a
run with a single interval uses its summary value.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from repro.nn import NORMS
from repro.track.host import host_label, host_notes
from repro.track.step_timings import load_step_timings
from repro.util import markdown_table

from .collect import Run, Stat, group_runs
from .depth import depth_section, is_depth_run
from .outcome import judge
from .paper import TABLE4, TABLE10, PaperTable
from .stats import CONFIDENCE, ratio_interval, welch_interval

QUALITY_TOLERANCE = 0.5  # BLEU points / error points: the paper's "comparable quality"
UNCONTROLLED_MARK = "*"  # a time cell from runs on a host not recorded as uncontended, or on mixed machines
STEPS_MARK = "†"  # a time cell from repro-bench steps' controlled measurement, not the runs' own clocks
MISSING = "missing"
CIFAR10_TRAIN_IMAGES = 50_000


def norm_order() -> tuple[str, ...]:
    """Table rows follow the norm registry's order (baselines first, then LN, RMS, pRMS)."""
    return tuple(NORMS)


def norm_rank(norm: str) -> int:
    """A norm's row position; norms the registry does not know go last."""
    order = norm_order()
    return order.index(norm) if norm in order else len(order)


def norm_label(norm: str, partial: Optional[float]) -> str:
    label = NORMS[norm].label if norm in NORMS else norm
    return f"{label} (p={partial * 100:g}%)" if partial is not None else label


# ------------------------------------------------------------------------ per-run measures
def step_ms(run: Run) -> Optional[float]:
    values = [v for _, v in run.series("time/step_ms", "train")]
    if len(values) >= 2:
        return sum(values[1:]) / len(values[1:])
    return values[0] if values else run.summary.get("time/step_ms")


def norm_ms(run: Run) -> Optional[float]:
    """Forward + backward time of all norm layers per sampled step (ms), mean over samples."""
    rows = [r for r in run.rows if r.get("split") == "train"
            and r.get("time/norm_fwd_ms") is not None and r.get("time/norm_bwd_ms") is not None]
    return sum(r["time/norm_fwd_ms"] + r["time/norm_bwd_ms"] for r in rows) / len(rows) if rows else None


def norm_share(run: Run) -> Optional[float]:
    values = [v for _, v in run.series("time/norm_share", "train")]
    return sum(values) / len(values) if values else run.summary.get("time/norm_share")


def steps_per_epoch(run: Run) -> Optional[int]:
    """The trainer's own count when its summary has it; else a CIFAR-10 epoch of the 50k training
    images less the validation hold-out, at the configured batch size (full batches only)."""
    if run.summary.get("steps_per_epoch"):
        return int(run.summary["steps_per_epoch"])
    data = run.config.get("data") or {}
    if not run.task.startswith("cifar10") or not data.get("batch_size"):
        return None
    return (CIFAR10_TRAIN_IMAGES - int(data.get("val_size") or 0)) // int(data["batch_size"])


def epoch_s(run: Run) -> Optional[float]:
    ms, steps = step_ms(run), steps_per_epoch(run)
    return ms * steps / 1e3 if ms is not None and steps else None


# Time cells from a repro-bench steps entry (repro.track.step_timings), for the rows it measured.
def steps_step_ms(entry: dict, runs: list[Run]) -> Optional[float]:
    return entry.get("median_step_ms")


def steps_epoch_s(entry: dict, runs: list[Run]) -> Optional[float]:
    per_epoch = steps_per_epoch(runs[0]) if runs else None
    ms = entry.get("median_step_ms")
    return ms * per_epoch / 1e3 if ms is not None and per_epoch else None


def steps_norm_ms(entry: dict, runs: list[Run]) -> Optional[float]:
    """None where the measurement timed no norm layer (the no-norm and WeightNorm models)."""
    total = (entry.get("norm_fwd_ms") or 0.0) + (entry.get("norm_bwd_ms") or 0.0)
    return total or None


def steps_norm_share(entry: dict, runs: list[Run]) -> Optional[float]:
    norm, step = steps_norm_ms(entry, runs), entry.get("median_step_ms")
    return 100.0 * norm / step if norm and step else None


def test_error(run: Run) -> Optional[float]:
    acc = run.summary.get("test/acc")
    return None if acc is None else 100.0 * (1.0 - acc)


def test_sets(runs: list[Run]) -> list[str]:
    """Test-set names of translation runs (`test/<name>/bleu`), in first-seen order; "test" for
    runs that only have the headline `test/bleu`."""
    names: dict[str, None] = {}
    for run in runs:
        for key in run.summary:
            m = re.fullmatch(r"test/(.+)/bleu", key)
            if m:
                names[m.group(1)] = None
    if not names and any("test/bleu" in run.summary for run in runs):
        names["test"] = None
    return list(names)


def bleu_of(name: str) -> Callable[[Run], Optional[float]]:
    """sacreBLEU (case-sensitive, detokenized: the paper's Table 4 metric) on test set `name`."""
    def value(run: Run) -> Optional[float]:
        return run.summary.get("test/bleu" if name == "test" else f"test/{name}/bleu")
    return value


# ---------------------------------------------------------------------------------- tables
@dataclass
class Column:
    key: str
    header: str
    measure: Callable[[Run], Optional[float]]
    digits: int
    # A time column: its cell from a repro-bench steps entry of the row's norm where the runs'
    # folder holds one (the controlled measurement), instead of the runs' own clocks.
    from_steps: Optional[Callable[[dict, list], Optional[float]]] = None


@dataclass
class Row:
    task: str
    norm: str
    partial: Optional[float]
    runs: list
    cells: dict  # column key -> Stat
    marks: dict = field(default_factory=dict)  # column key -> STEPS_MARK or UNCONTROLLED_MARK

    @property
    def label(self) -> str:
        return norm_label(self.norm, self.partial)


@dataclass
class Table:
    key: str          # output file stem
    title: str
    columns: list
    rows: list
    quality: list     # column keys the quality verdict is judged on
    time_key: str     # the column whose ratio to LayerNorm is the speedup
    paper: PaperTable
    notes: list
    # task -> {norm: entry of repro-bench steps' steps.json}: paired, interleaved step timings, the
    # speed measurement the tables prefer over training runs' wall clock
    controlled: dict = field(default_factory=dict)
    sections: list = field(default_factory=list)        # Markdown lines of sections after the verdicts
    extra_verdicts: list = field(default_factory=list)  # verdict lines of those sections


def _row_order(row: Row) -> tuple:
    rank = norm_rank(row.norm)
    return (row.task, rank, row.norm, row.partial or 0.0)


def build_table(key: str, title: str, runs: list[Run], columns: list[Column], quality: list[str],
                time_key: str, paper: PaperTable, controlled: Optional[dict] = None, *,
                every_paper_row: bool = False) -> Table:
    """Rows from the completed runs, one per (task, norm, partial); with `every_paper_row`, also
    an all-`missing` row for each of the paper's rows that no run measured. Crashed and
    still-running runs are listed apart in the notes, never averaged in."""
    completed = [r for r in runs if r.state == "completed"]
    notes = [f"excluded, {'still running' if r.state == 'running' else 'crashed'}: {r.path} (status {r.status}, "
             f"step {r.summary.get('step', '?')})" for r in runs if r.state != "completed"]
    rows = []
    for (task, norm, partial), group in group_runs(completed).items():
        cells, marks = {}, {}
        entry = ((controlled or {}).get(task) or {}).get(norm)
        for col in columns:
            if col.from_steps and entry:
                value = col.from_steps(entry, group)
                cells[col.key] = Stat([value] if value is not None and math.isfinite(value) else [])
                marks[col.key] = STEPS_MARK
                continue
            values = [col.measure(r) for r in group]
            cells[col.key] = Stat([v for v in values if v is not None and math.isfinite(v)])
            if col.from_steps and cells[col.key].n and not speed_controlled(group):
                marks[col.key] = UNCONTROLLED_MARK
        rows.append(Row(task, norm, partial, group, cells, marks))
    if every_paper_row:
        rows += _unmeasured_paper_rows(paper, rows, columns)
    rows.sort(key=_row_order)
    return Table(key, title, columns, rows, quality, time_key, paper, notes, controlled or {})


def _unmeasured_paper_rows(paper: PaperTable, rows: list[Row], columns: list[Column]) -> list[Row]:
    """A row of `missing` cells for each of the paper's rows that no run measured (on the paper's
    task; a paper row without a p matches any p), so the table always shows the whole paper."""
    task = paper.budget.task

    def measured(norm: str, partial: Optional[float]) -> bool:
        return any(r.task == task and r.norm == norm and (partial is None or r.partial is not None
                                                           and math.isclose(r.partial, partial))
                   for r in rows)

    return [Row(task, p.norm, p.partial, [], {c.key: Stat([]) for c in columns})
            for p in paper.rows if not measured(p.norm, p.partial)]


def table4(runs: list[Run], controlled: Optional[dict] = None) -> Table:
    """Translation runs: those with BLEU in their summary. The depth study's runs are not rows of
    the table: they make its section "Does the no-norm Transformer fail at depth?"."""
    depth = [r for r in runs if is_depth_run(r)]
    runs = [r for r in runs if not is_depth_run(r) and any(k.startswith("test/") and "bleu" in k for k in r.summary)]
    columns = []
    for name in test_sets(runs):
        columns.append(Column(f"{name}/bleu", f"{name} sacreBLEU", bleu_of(name), 2))
    columns += [Column("time", "s / 1k steps", step_ms, 1, steps_step_ms),
                Column("norm_ms", "norm ms / step", norm_ms, 2, steps_norm_ms),
                Column("norm_share", "norm share %", lambda r: _percent(norm_share(r)), 1, steps_norm_share)]
    quality = [c.key for c in columns if c.key.endswith("/bleu")]
    table = build_table("table4_transformer", "Table 4: Transformer translation", runs, columns, quality,
                        "time", TABLE4, controlled)
    if depth:
        table.sections, verdict = depth_section(depth, [run for row in table.rows for run in row.runs])
        table.extra_verdicts = [f"depth: {verdict}"]
    return table


def table10(runs: list[Run], controlled: Optional[dict] = None) -> Table:
    """ConvPool-CNN-C on CIFAR-10 (task cifar10_cnn)."""
    runs = [r for r in runs if r.task == "cifar10_cnn"]
    columns = [Column("error", "test error %", test_error, 2),
               Column("time", "s / epoch", epoch_s, 1, steps_epoch_s),
               Column("step_ms", "ms / step", step_ms, 1, steps_step_ms),
               Column("norm_ms", "norm ms / step", norm_ms, 2, steps_norm_ms),
               Column("norm_share", "norm share %", lambda r: _percent(norm_share(r)), 1, steps_norm_share)]
    return build_table("table10_cifar10", "Table 10: ConvPool-CNN-C on CIFAR-10", runs, columns, ["error"],
                       "time", TABLE10, controlled, every_paper_row=True)


def _percent(value: Optional[float]) -> Optional[float]:
    return None if value is None else 100.0 * value


# -------------------------------------------------------------------------------- verdicts
def _baseline(table: Table, row: Row) -> Optional[Row]:
    return next((r for r in table.rows if r.task == row.task and r.norm == "layernorm" and r.runs), None)


def quality_verdict(name: str, ours: Stat, base: Stat, higher_is_better: bool) -> str:
    """Δ = ours - LayerNorm with its Welch t-interval; better / kept / worse / inconclusive as in
    the module docstring (kept: at most QUALITY_TOLERANCE points worse)."""
    if not ours.n or not base.n:
        return f"{name}: {MISSING} (runs: {ours.n} vs LayerNorm {base.n})"
    delta = ours.mean - base.mean
    side = "better than" if (delta > 0) == higher_is_better and delta != 0 else "worse than" if delta else "same as"
    text = f"{name}: Δ = {delta:+.2f} ({side} LayerNorm)"
    interval = welch_interval(ours.values, base.values)
    if interval is None:
        return (f"{text}, n = {ours.n} vs {base.n}: no interval with a single seed -> inconclusive")
    # the interval of "how much worse than LayerNorm": > 0 is worse
    worse_low, worse_high = (-interval.high, -interval.low) if higher_is_better else (interval.low, interval.high)
    if worse_high < 0:
        call = "better"
    elif worse_low > QUALITY_TOLERANCE:
        call = f"worse (by more than {QUALITY_TOLERANCE})"
    elif worse_high <= QUALITY_TOLERANCE:
        call = f"kept (at most {QUALITY_TOLERANCE} worse)"
    else:
        call = "inconclusive"
    return (f"{text}, {CONFIDENCE:.0%} Welch t-interval {interval.text()} "
            f"(n = {ours.n} vs {base.n}, df {interval.df:.1f}) -> {call}")


def _hardware(runs: list[Run]) -> str:
    devices = sorted({host_label(r.summary.get("environment")) for r in runs})
    backends = sorted({str((r.config.get("norm") or {}).get("backend") or "?") for r in runs})
    return f"{' / '.join(devices)}, backend {'/'.join(backends)}"


def shortfall(paper: PaperTable, runs: list[Run]) -> list[str]:
    """How `runs` fall short of the paper's set-up and budget; empty when they match it."""
    budget, gaps = paper.budget, set()
    for run in runs:
        if run.task != budget.task:
            gaps.add(f"task {run.task}, not {budget.task}")
        model = run.config.get("model") or {}
        for key, want in budget.model.items():
            if model.get(key) != want:
                gaps.add(f"model.{key}={model.get(key)} (paper: {want})")
        step = run.summary.get("step")
        if budget.steps and (step or 0) < budget.steps:
            gaps.add(f"{step} of {budget.steps} steps")
        tokens = tokens_per_step(run)
        if budget.tokens_per_step and (tokens or 0) < 0.9 * budget.tokens_per_step:
            gaps.add(f"~{tokens} of ~{budget.tokens_per_step} tokens per step")
        epochs = run_epochs(run)
        if budget.epochs and (epochs or 0) < budget.epochs:
            gaps.add(f"{epochs:.3g} of {budget.epochs} epochs" if epochs else f"epochs unknown (paper: {budget.epochs})")
        precision = run.summary.get("precision")
        if budget.precision and precision != budget.precision:
            gaps.add(f"{precision} autocast (paper: {budget.precision})" if precision == "bf16"
                     else f"precision {precision or 'unknown'} (paper: {budget.precision})")
    return sorted(gaps)


def tokens_per_step(run: Run) -> Optional[int]:
    """Padded tokens per optimizer step: data.max_tokens (over all devices) x trainer.accumulate."""
    data, trainer = run.config.get("data") or {}, run.config.get("trainer") or {}
    if not data.get("max_tokens"):
        return None
    return int(data["max_tokens"]) * int(trainer.get("accumulate") or 1)


def run_epochs(run: Run) -> Optional[float]:
    steps, per_epoch = run.summary.get("step"), steps_per_epoch(run)
    return steps / per_epoch if steps and per_epoch else None


def _comparability(table: Table, *groups: Row) -> str:
    gaps = shortfall(table.paper, [run for row in groups for run in row.runs])
    if not gaps:
        return ""
    return f"; not comparable to the paper's numbers ({'; '.join(gaps)})"


def uncontended(run: Run) -> bool:
    """Whether the run recorded a host with nothing else competing for it while it trained."""
    return (run.summary.get("environment") or {}).get("contended") is False


def speed_controlled(runs: list[Run]) -> bool:
    """Whether the runs' own times compare: each had its host to itself, all on one kind of machine."""
    return (bool(runs) and all(uncontended(r) for r in runs)
            and len({host_label(r.summary.get("environment")) for r in runs}) == 1)


def _speed_part(what: str, base: Stat, ours: Stat) -> str:
    if not ours.n or not base.n or not ours.mean:
        return f"{what} {MISSING}"
    interval = ratio_interval(base.values, ours.values)
    spread = (f" {interval.text(signed=False)}" if interval else " (no interval: a single run)")
    return f"{what} {base.mean / ours.mean:.2f}x{spread}"


def controlled_timing(table: Table, row: Row) -> Optional[dict]:
    """repro-bench steps' paired measurement of this row's norm on its task, if the runs have one."""
    return (table.controlled.get(row.task) or {}).get(row.norm)


def _inverse(ratio: float, ci: list) -> str:
    """A norm/LayerNorm time ratio and its interval as LayerNorm/norm (> 1: faster)."""
    return f"{1 / ratio:.2f}x [{1 / ci[1]:.2f}, {1 / ci[0]:.2f}]"


# A speed-up smaller than this is not called faster or slower: repro-bench steps' paired ratio
# for the same code and norm moves between quiet sessions by more than its within-session
# bootstrap interval says -- by 4 % on the 2-core CPU the committed tables ran on
# (results/steps/README.md), and by 7.7 % (no norm / LayerNorm: 1.043 [1.017, 1.079], then 0.966
# [0.943, 0.987], Table 10's model, the same code, 40 rounds each, minutes apart; results/steps/
# README.md, 2026-12-01). So a call needs the whole interval beyond this band.
SAME_SPEED_BAND = 0.08


def speed_call(low: float, high: float) -> str:
    """The verdict on a 95 % interval of a norm's time / LayerNorm's time (< 1: faster)."""
    if 1 - SAME_SPEED_BAND <= low and high <= 1 + SAME_SPEED_BAND:
        return f"the same speed (within ±{SAME_SPEED_BAND:.0%}, the step-time drift measured between sessions)"
    if high < 1 - SAME_SPEED_BAND:
        return "faster"
    if low > 1 + SAME_SPEED_BAND:
        return "slower"
    return f"inconclusive (the interval reaches into the ±{SAME_SPEED_BAND:.0%} step-time drift measured between sessions)"


def controlled_speed_verdict(table: Table, row: Row, entry: dict) -> str:
    host = entry.get("host") or {}
    # the step is what a user waits for; the norm layers' own time says what the norm changed,
    # which a step where the norms are a small share cannot resolve
    call = f"step time: {speed_call(*entry['ratio_ci95'])}"
    parts = [f"step time {_inverse(entry['ratio_vs_layernorm'], entry['ratio_ci95'])}"]
    if entry.get("norm_ratio_vs_layernorm") and entry.get("norm_ratio_ci95"):
        parts.append(f"norm time {_inverse(entry['norm_ratio_vs_layernorm'], entry['norm_ratio_ci95'])}")
        call += f"; norm time: {speed_call(*entry['norm_ratio_ci95'])}"
    published = paper_speedup(table.paper, row.norm)
    published = f"; paper: {published:.2f}x on {table.paper.hardware}" if published else ""
    where = host_label(host)
    return (f"LayerNorm/{row.label} = {', '.join(parts)} (>1: faster than LayerNorm; paired, interleaved "
            f"steps by repro-bench steps on {where}, {host.get('cpu_threads', '?')} thread(s), "
            f"{'a contended' if host.get('contended') else 'an uncontended'} host; 95 % bootstrap intervals"
            f"{published}) -> {call}")


def speed_verdict(table: Table, row: Row, base: Row) -> str:
    entry = controlled_timing(table, row)
    if entry:
        return controlled_speed_verdict(table, row, entry)
    parts = [_speed_part("step time", base.cells[table.time_key], row.cells[table.time_key]),
             _speed_part("norm time", base.cells["norm_ms"], row.cells["norm_ms"])]
    published = paper_speedup(table.paper, row.norm)
    published = f"; paper: {published:.2f}x on {table.paper.hardware}" if published else ""
    head = (f"LayerNorm/{row.label} = {', '.join(parts)} (>1: faster than LayerNorm; "
            f"{_hardware(row.runs + base.runs)}{published})")
    if not speed_controlled(row.runs + base.runs):
        return (f"{head} -> no speed verdict: not measured under controlled conditions (training runs on a "
                f"host not recorded as uncontended, or on different kinds of machine; use repro-bench for speed)")
    interval = ratio_interval(base.cells[table.time_key].values, row.cells[table.time_key].values)
    if interval is None:
        call = "inconclusive (a single run per norm)"
    else:
        call = speed_call(1 / interval.high, 1 / interval.low)  # the interval is LayerNorm's / ours
    return f"{head} -> {call}"


def no_norm_verdict(table: Table, row: Row) -> Optional[str]:
    """Where the paper's model failed to train without a norm: did ours?"""
    published = table.paper.row("none")
    if row.norm != "none" or published is None or "failed" not in published.values.values():
        return None
    judged = [o for o in (judge(run) for run in row.runs) if o.failed is not None]
    if not judged:
        return f"no norm, {row.task}: nothing to judge it by ({MISSING}); the paper's model failed to train"
    failed = [o for o in judged if o.failed]
    if len(failed) == len(judged):
        return (f"no norm, {row.task}: failed to train here too ({len(failed)} of {len(judged)} runs; "
                f"{failed[0].reason}), as the paper reports")
    gaps = shortfall(table.paper, row.runs)
    setup = f" (this set-up differs from the paper's: {'; '.join(gaps)})" if gaps else ""
    if failed:
        return (f"no norm, {row.task}: failed to train in {len(failed)} of {len(judged)} runs ({failed[0].reason}), "
                f"trained in the others; the paper's Transformer base failed to train without a norm{setup}")
    bleu = [row.cells[k] for k in table.quality if row.cells[k].n]
    scores = f"BLEU {max(stat.mean for stat in bleu):.2f}, n = {bleu[0].n}" if bleu else judged[0].reason
    return (f"no norm, {row.task}: TRAINED here ({scores}), while the paper's "
            f"Transformer base failed to train without a norm{setup}")


def verdicts(table: Table) -> list[str]:
    lines = []
    higher_is_better = table.key.startswith("table4")
    for row in table.rows:
        if not row.runs:  # a paper row no run measured: every cell says missing already
            continue
        no_norm = no_norm_verdict(table, row)
        if no_norm:
            lines.append(no_norm)
        base = _baseline(table, row)
        if row.norm not in ("rmsnorm", "prmsnorm"):  # the paper's claims are about these two
            continue
        prefix = f"{row.task} {row.label} vs LayerNorm"
        if base is None:
            lines.append(f"{prefix}: no LayerNorm runs to compare with ({MISSING})")
            continue
        comparable = _comparability(table, row, base)
        for key in table.quality:
            header = next(c.header for c in table.columns if c.key == key)
            lines.append(f"quality, {prefix}, " + quality_verdict(header, row.cells[key], base.cells[key],
                                                                 higher_is_better) + comparable)
        lines.append(f"speed, {prefix}: {speed_verdict(table, row, base)}")
    return lines + table.extra_verdicts


def speedup(table: Table, row: Row) -> Optional[float]:
    """LayerNorm's step time over this row's: from repro-bench steps when the runs have it."""
    entry = controlled_timing(table, row)
    if entry:
        return 1 / entry["ratio_vs_layernorm"]
    base = _baseline(table, row)
    if base is None:
        return None
    ours, theirs = row.cells[table.time_key], base.cells[table.time_key]
    return theirs.mean / ours.mean if ours.n and theirs.n and ours.mean else None


# ------------------------------------------------------------------------------- rendering
def _fmt(stat: Stat, digits: int, group_size: int, pm: str = "±", mark: str = "") -> str:
    if not stat.n:
        return MISSING
    text = f"{stat.mean:.{digits}f}"
    if mark == STEPS_MARK:  # one controlled measurement, not a mean over the seeds
        return text + mark
    if stat.std is not None:
        text += f" {pm} {stat.std:.{digits}f}"
    # The seed count of a cell is shown where it differs from the row's.
    return text + (f" (n={stat.n})" if stat.n != group_size else "") + mark


def _budget(runs: list[Run]) -> str:
    steps = sorted({r.summary.get("step") for r in runs if r.summary.get("step") is not None})
    return "/".join(str(s) for s in steps) or "?"


def _grid(table: Table, pm: str = "±") -> tuple[list[str], list[list[str]]]:
    multi_task = len({r.task for r in table.rows}) > 1
    header = (["task"] if multi_task else []) + ["norm", "seeds", "steps"] + [c.header for c in table.columns] + ["speedup vs LN"]
    body = []
    for row in table.rows:
        ratio, base = speedup(table, row), _baseline(table, row)
        controlled = controlled_timing(table, row) or (base and speed_controlled(row.runs + base.runs))
        mark = "" if controlled else UNCONTROLLED_MARK
        body.append(([row.task] if multi_task else []) + [row.label, str(len(row.runs)), _budget(row.runs)]
                    + [_fmt(row.cells[c.key], c.digits, len(row.runs), pm, row.marks.get(c.key, ""))
                       for c in table.columns]
                    + [f"{ratio:.2f}x{mark}" if ratio else MISSING])
    return header, body


def _paper_grid(paper: PaperTable) -> tuple[list[str], list[list[str]]]:
    header = ["norm"] + list(paper.columns.values())
    body = [[norm_label(r.norm, r.partial)] + [_paper_cell(r.values.get(k)) for k in paper.columns]
            for r in paper.rows]
    return header, body


def _paper_cell(value) -> str:
    if value is None:
        return MISSING
    return f"{value:g}" if isinstance(value, float) else str(value)


def paper_speedup(paper: PaperTable, norm: str) -> Optional[float]:
    ours, base = paper.row(norm), paper.row("layernorm")
    if ours is None or base is None:
        return None
    return base.values["time"] / ours.values["time"]


def _md_table(header: list[str], body: list[list[str]]) -> str:
    return "\n".join(markdown_table(header, body))


def _signature_lines(table: Table) -> list[str]:
    """Table 4: the sacreBLEU signature(s) the runs recorded (the metric is only defined with it)."""
    if not table.key.startswith("table4"):
        return []
    runs = [run for row in table.rows for run in row.runs]
    signatures = sorted({r.summary["bleu_signature"] for r in runs if r.summary.get("bleu_signature")})
    unrecorded = sum(1 for r in runs if not r.summary.get("bleu_signature"))
    lines = [f"sacreBLEU signature: `{sig}`" for sig in signatures]
    if unrecorded:
        lines.append(f"sacreBLEU signature: not recorded by {unrecorded} of {len(runs)} runs (made before runs "
                     "recorded it; repro scores sacreBLEU's default BLEU: case-sensitive, detokenized, 13a).")
    return [*lines, ""]


def _steps_line(task: str, entries: dict) -> str:
    """Where and on what code a task's repro-bench steps measurement was taken."""
    entry = next(iter(entries.values()))
    host = entry.get("host") or {}
    commit = str(host.get("git_sha") or "unknown")[:10] + (" (with uncommitted changes)" if host.get("git_dirty") else "")
    precisions = sorted({str((e.get("setting") or {}).get("precision") or "") for e in entries.values()} - {""})
    return (f"- {task} time columns ({STEPS_MARK}) and speedup: repro-bench steps on {host_label(host)}, "
            f"{host.get('cpu_threads', '?')} thread(s), {'contended' if host.get('contended') else 'uncontended'}, "
            f"commit {commit}, {str(entry.get('created') or '?')[:10]}, {entry.get('rounds', '?')} rounds, "
            + (f"precision {'/'.join(precisions)}" if precisions else "precision not recorded"))


def _hardware_lines(table: Table) -> list[str]:
    lines = [f"- {row.task} {row.label}: {_hardware(row.runs)}" for row in table.rows if row.runs]
    tasks = {row.task for row in table.rows if row.runs}
    lines += [_steps_line(task, table.controlled[task]) for task in sorted(tasks) if table.controlled.get(task)]
    runs = [run for row in table.rows for run in row.runs]
    lines += [f"- {note}" for note in host_notes({run.path.name: run.summary.get("environment") for run in runs})]
    emulated = sorted(run.path.name for run in runs
                      if any(start.get("bf16_matmul") == "emulated" for start in run.summary.get("starts") or []))
    if emulated:
        lines.append("- runs whose bf16 convolutions and matrix products were emulated in fp32 on bf16-rounded "
                     "operands, on a CPU without oneDNN bf16 (repro.train.bf16_emulation: the rounding points of "
                     f"bf16 kernels, another order of fp32 sums), for all or part of their steps: {', '.join(emulated)}")
    return lines


def to_markdown(table: Table, notes: Sequence[str] = ()) -> str:
    parts = [f"# {table.title} (regenerated)", ""] + [line for note in notes for line in (f"**{note}**", "")]
    if any(row.runs for row in table.rows):
        parts += [_md_table(*_grid(table)), "",
                  "Cells: mean ± sample std over seeds (n = cells with fewer runs than the row); "
                  f"`{MISSING}`: no run measured it. steps: optimizer steps each run trained (the budget, "
                  "not the paper's schedule unless it says so). Time columns and speedup vs LN: from "
                  "repro-bench steps (paired, interleaved; the median of one measurement, no spread over "
                  f"seeds; its host and commit under Measured on) where the runs' folder holds its "
                  f"steps.json for the task, those cells marked `{STEPS_MARK}`; else the training runs' own "
                  "clocks, after their first logged interval (warm-up)."
                  + (" s / epoch = ms/step × steps per epoch." if table.key.startswith("table10") else
                     " s / 1k steps = ms per step.")
                  + f" `{UNCONTROLLED_MARK}`: from training runs on a host not recorded as uncontended, or on "
                  "different kinds of machine, not a controlled speed measurement.", "",
                  *_signature_lines(table),
                  "Measured on:", *_hardware_lines(table), "", "## Verdicts", "",
                  *([f"- {line}" for line in verdicts(table) if line not in table.extra_verdicts]
                    or ["- none: no RMSNorm/pRMSNorm runs"])]
    else:
        parts += ([_md_table(*_grid(table)), ""] if table.rows else []) + [
            "No runs found for this table: every cell is missing."]
    if table.sections:
        parts += ["", *table.sections]
    if table.notes:
        parts += ["", "## Runs left out", "", *[f"- {note}" for note in table.notes]]
    p = table.paper
    parts += ["", f"## Published ({p.name}): {p.setup}, timed on {p.hardware}", "",
              _md_table(*_paper_grid(p)), "", f"Source: {p.source}."]
    return "\n".join(parts) + "\n"


def to_csv(table: Table) -> str:
    """One line per group; per column its mean, std and count, so other tools need not parse ±."""
    out = io.StringIO()
    writer = csv.writer(out)
    fields = []
    for c in table.columns:
        fields += [f"{c.key}_mean", f"{c.key}_std", f"{c.key}_n"]
    writer.writerow(["task", "norm", "partial", "runs", "steps", *fields, "speedup_vs_layernorm", "time_source"])
    for row in table.rows:
        values = []
        for c in table.columns:
            s = row.cells[c.key]
            values += [_num(s.mean), _num(s.std), s.n]
        source = "repro-bench steps" if STEPS_MARK in row.marks.values() else "training runs" if row.runs else ""
        writer.writerow([row.task, row.norm, _num(row.partial), len(row.runs), _budget(row.runs), *values,
                         _num(speedup(table, row)), source])
    return out.getvalue()


def _num(value: Optional[float]) -> str:
    return "" if value is None else repr(float(value))


def _tex_escape(text: str) -> str:
    return re.sub(r"([%&_#$])", r"\\\1", text)


def to_latex(table: Table) -> str:
    # ± goes in as a placeholder so escaping the cells leaves the math macro intact.
    header, body = _grid(table, pm="\x00")
    n_text = len(header) - len(table.columns) - 1
    lines = [f"% {table.title} (regenerated by repro-tables); published: {table.paper.source}",
             "\\begin{tabular}{" + "l" * n_text + "r" * (len(table.columns) + 1) + "}",
             "\\toprule", " & ".join(_tex_escape(h) for h in header) + " \\\\", "\\midrule"]
    lines += [" & ".join(_tex_escape(c).replace("\x00", "$\\pm$").replace(STEPS_MARK, "$^\\dagger$") for c in row)
              + " \\\\" for row in body]
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}"]) + "\n"


TABLE_FILES = {"table4": "table4_transformer", "table10": "table10_cifar10"}  # name -> file stem under tables/
TABLE_NAMES = tuple(TABLE_FILES)  # what --note TABLE=TEXT may name


def notes_in(markdown: str) -> list[str]:
    """The notes of a table's Markdown as `to_markdown` wrote them: the bold paragraphs between its
    title and its first table row."""
    notes = []
    for line in markdown.splitlines()[1:]:
        if line.startswith("|") or line.startswith("#"):
            break
        if line.startswith("**") and line.endswith("**"):
            notes.append(line[2:-2])
    return notes


def written_notes(out: Path) -> dict[str, list[str]]:
    """{table name: notes} of the tables already written under out/tables ([] where none is)."""
    files = {name: Path(out) / "tables" / f"{stem}.md" for name, stem in TABLE_FILES.items()}
    return {name: notes_in(path.read_text()) if path.is_file() else [] for name, path in files.items()}


def find_step_timings(roots: Sequence[Path], runs: list[Run], warnings: Optional[list[str]] = None) -> dict:
    """task -> {norm: entry}: the newest repro-bench steps measurement of each of the runs' tasks
    found under the runs' folders (stored next to the runs). One whose recorded setting (model,
    precision, batch, pRMSNorm ratio) differs from what a run of that norm under the same folder
    trained with is not used: those runs' speed then comes from their own times, and `warnings`
    gets a line saying why. Runs in other folders (another study of the task, e.g. the deeper
    models of the depth section) are not what it timed. Measurements from before settings were
    recorded are taken as they are."""
    found = {}
    for task in sorted({run.task for run in runs}):
        for root in roots:
            entries = load_step_timings(root, task)
            if not entries:
                continue
            folder = Path(root).resolve()
            beside = [run for run in runs if folder in Path(run.path).resolve().parents]
            differences = [f"{norm}: {difference}" for norm, entry in entries.items()
                           for difference in [setting_difference(entry.get("setting"), beside, task, norm)] if difference]
            if differences:
                if warnings is not None:
                    warnings.append(f"step timings of {task} under {root} not used: measured on another setting "
                                    f"than the runs ({differences[0]}); speed from the runs' own times")
            else:
                found[task] = entries
            break
    return found


def setting_difference(setting: Optional[dict], runs: list[Run], task: str, norm: str) -> Optional[str]:
    """The first way a steps.json entry's `setting` differs from the runs of `task` and `norm`, or None."""
    if not setting:
        return None
    for run in runs:
        if run.task != task or run.norm != norm:
            continue
        model, data = run.config.get("model") or {}, run.config.get("data") or {}
        for key, value in (setting.get("model") or {}).items():
            if key in model and model[key] != value:
                return f"model.{key}={value} measured, {model[key]} in {run.path.name}"
        precision = run.summary.get("precision")
        if precision and setting.get("precision") and precision != setting["precision"]:
            return f"precision {setting['precision']} measured, {precision} in {run.path.name}"
        batch = data.get("max_tokens") or data.get("batch_size")
        if batch and setting.get("batch") and batch != setting["batch"]:
            return f"batch {setting['batch']} measured, {batch} in {run.path.name}"
        if setting.get("partial") is not None and run.partial is not None and run.partial != setting["partial"]:
            return f"partial {setting['partial']} measured, {run.partial} in {run.path.name}"
    return None


def write_tables(runs: list[Run], out: Path, notes: Optional[dict[str, list[str]]] = None,
                 controlled: Optional[dict] = None) -> list[Path]:
    """Both tables as Markdown, CSV and LaTeX under out/tables; `notes` ({"table4": [...],
    "table10": [...]}) head each table's Markdown."""
    out = Path(out) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    notes = notes or {}
    paths = []
    for table in (table4(runs, controlled), table10(runs, controlled)):
        table_notes = notes.get(table.key.split("_")[0], [])
        for ext, text in (("md", to_markdown(table, table_notes)), ("csv", to_csv(table)), ("tex", to_latex(table))):
            path = out / f"{table.key}.{ext}"
            path.write_text(text)
            paths.append(path)
    return paths
