"""repro-tables: rebuild the paper's tables and figures from runs; run the analyses.

    repro-tables --runs multirun/ --out results/
    repro-tables --runs multirun/ --out results/ --keep-notes   # the notes already in results/tables stay
    repro-tables --wandb ENTITY/PROJECT [--group G] [--tags T ...] --out results/
    repro-tables --wandb ENTITY/PROJECT --offline            # from the cache only
    repro-tables --wandb ENTITY/PROJECT --make-report        # a saved W&B report of the runs
    repro-tables analyze {invariance,control-bits,control-bits-training,partial-error,shift-training,all} [--out results/analysis]

Writes tables/table4_transformer.{md,csv,tex}, tables/table10_cifar10.{md,csv,tex} and
figures/*.png under --out; W&B runs are cached as run-store directories under --cache.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from repro.tables import collect_local, dedupe, fetch_wandb, verdicts
from repro.tables.depth import is_depth_run
from repro.tables.figures import write_figures
from repro.tables.render import TABLE_NAMES, find_step_timings, table4, table10, write_tables, written_notes

DEFAULT_CACHE = Path(os.environ.get("REPRO_CACHE", "~/.cache/repro")).expanduser() / "wandb"


def tables_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repro-tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", metavar="DIR", action="append", default=[], help="run-store tree (repeatable)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="collect the runs of a W&B project")
    p.add_argument("--group", help="W&B group to select (with --wandb)")
    p.add_argument("--tags", nargs="+", metavar="T", help="select W&B runs with any of these tags (with --wandb)")
    p.add_argument("--cache", metavar="DIR", default=str(DEFAULT_CACHE), help=f"W&B run cache (default {DEFAULT_CACHE})")
    p.add_argument("--refresh", action="store_true", help="re-fetch W&B runs already cached")
    p.add_argument("--offline", action="store_true", help="use the W&B cache only, no network")
    p.add_argument("--out", metavar="DIR", default="results", help="output folder (default results)")
    p.add_argument("--bench", metavar="DIR", help="repro-bench results for the GB/s figure (default results/bench)")
    p.add_argument("--note", metavar="[TABLE=]TEXT", action="append", default=[],
                   help="a line printed under the title of each table, e.g. the budget the runs had; "
                        "table4=TEXT or table10=TEXT puts it under that table only (repeatable)")
    p.add_argument("--keep-notes", action="store_true",
                   help="a table given no --note keeps the notes of its Markdown already under --out "
                        "(regenerating after adding runs does not drop them)")
    p.add_argument("--make-report", action="store_true", help="save a W&B report of the runs (with --wandb)")
    p.add_argument("--dry-run", action="store_true", help="with --make-report: build the report, do not save it")
    return p


def parse_notes(p: argparse.ArgumentParser, values: list[str]) -> dict[str, list[str]]:
    """--note values -> {table: [notes]}; a note without a known TABLE= prefix goes to every table."""
    notes = {name: [] for name in TABLE_NAMES}
    for value in values:
        name, sep, text = value.partition("=")
        targets = [name] if sep and name in TABLE_NAMES else list(TABLE_NAMES)
        text = text if sep and name in TABLE_NAMES else value
        if not text.strip():
            p.error(f"--note {value!r}: the note is empty (use TEXT, or TABLE=TEXT with TABLE one of "
                    f"{', '.join(TABLE_NAMES)})")
        for target in targets:
            notes[target].append(text)
    return notes


def run_tables(argv: list[str]) -> int:
    p = tables_parser()
    args = p.parse_args(argv)
    if not args.runs and not args.wandb:
        p.error("give at least one --runs DIR or --wandb ENTITY/PROJECT")
    for flag, value in (("--group", args.group), ("--tags", args.tags), ("--make-report", args.make_report),
                        ("--offline", args.offline), ("--refresh", args.refresh)):
        if value and not args.wandb:
            p.error(f"{flag} needs --wandb ENTITY/PROJECT")
    if args.dry_run and not args.make_report:
        p.error("--dry-run goes with --make-report")
    notes = parse_notes(p, args.note)
    if args.keep_notes:
        kept = written_notes(Path(args.out))
        notes = {name: given or kept[name] for name, given in notes.items()}
    if args.wandb and args.wandb.count("/") != 1:
        p.error(f"--wandb must be ENTITY/PROJECT, got {args.wandb!r}")
    if args.make_report:
        from repro.tables.report import build_report, save_report

        try:
            report = build_report(args.wandb, group=args.group, tags=args.tags)
            if args.dry_run:
                print(f"report built, not saved (--dry-run): {len(report.blocks)} blocks")
            else:
                print(f"saved W&B report: {save_report(report)}")
        except RuntimeError as error:
            p.error(str(error))
        return 0
    try:
        runs = collect_local(Path(d) for d in args.runs)
        if args.wandb:
            dirs = fetch_wandb(args.wandb, Path(args.cache), group=args.group, tags=args.tags,
                               refresh=args.refresh, offline=args.offline)
            runs += collect_local(dirs)
    except (FileNotFoundError, RuntimeError) as error:
        p.error(str(error))
    runs = dedupe(runs)
    if not runs:
        p.error("no runs collected: nothing to tabulate")
    out = Path(args.out)
    bench = Path(args.bench) if args.bench else out / "bench"
    skipped: list[str] = []  # step timings measured on another setting than the runs
    controlled = find_step_timings([Path(d) for d in args.runs], runs, skipped)  # repro-bench steps next to the runs
    for line in skipped:
        print(f"repro-tables: warning: {line}", file=sys.stderr)
    # the depth study's runs are a section under Table 4, not more runs of its norms' curves
    paths = write_tables(runs, out, notes, controlled) + write_figures([r for r in runs if not is_depth_run(r)],
                                                                       out, bench)
    states = {state: sum(r.state == state for r in runs) for state in ("completed", "crashed", "running")}
    print(f"{len(runs)} runs collected: " + ", ".join(f"{n} {state}" for state, n in states.items())
          + ("; only completed runs are averaged (the others are listed under each table)"
             if states["completed"] < len(runs) else ""))
    for table in (table4(runs, controlled), table10(runs, controlled)):
        print(f"{table.title}: {sum(1 for row in table.rows if row.runs)} groups")
        for line in verdicts(table):
            print(f"  {line}")
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["analyze"]:
        from repro.analysis.cli import run_analyze

        return run_analyze(argv[1:])
    return run_tables(argv)


if __name__ == "__main__":
    sys.exit(main())
