"""`repro-tables analyze NAME`: run one of the analyses (or all that need no run) into --out."""
from __future__ import annotations

import argparse
from pathlib import Path

ANALYSES = ("invariance", "control-bits", "partial-error", "all")


def run_analyze(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="repro-tables analyze", description=__doc__)
    p.add_argument("name", choices=ANALYSES, help="which analysis; all = every one (partial-error needs --run)")
    p.add_argument("--out", metavar="DIR", default="results/analysis", help="output folder (default results/analysis)")
    p.add_argument("--run", metavar="RUN_DIR", help="partial-error: a finished repro-train run (config.yaml, checkpoints/)")
    p.add_argument("--data-root", metavar="DIR", help="partial-error: data.root, when the run's own is not here")
    args = p.parse_args(argv)
    if args.name == "partial-error" and not args.run:
        p.error("partial-error needs --run RUN_DIR (a finished repro-train run)")
    out = Path(args.out)
    wrote = []
    if args.name in ("invariance", "all"):
        from . import invariance

        invariance.run(out)
        wrote.append("invariance")
    if args.name in ("control-bits", "all"):
        from . import control_bits

        control_bits.run(out)
        wrote.append("control_bits")
    if args.name == "partial-error" or (args.name == "all" and args.run):
        from . import partial_error

        try:
            partial_error.run(out, Path(args.run), args.data_root)
        except (FileNotFoundError, ValueError) as error:
            p.error(str(error))
        wrote.append("partial_error")
    for name in wrote:
        print(f"wrote {out / name}.md and {out / name}.png")
    return 0
