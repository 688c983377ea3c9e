"""repro-bench: time LayerNorm, RMSNorm and pRMSNorm kernels on this machine.

    repro-bench --quick                      # small grid, ~1-2 minutes on a 2-core CPU
    repro-bench                              # the standard grid of the device (GPU: up to N=256K)
    repro-bench --ops rms_norm --backends triton,liger --passes fwdbwd --N 4096,8192
    repro-bench steps task=cifar10_cnn model.width=16 data.root=DIR --norms layernorm,rmsnorm --steps 40 --out DIR

The `steps` subcommand times whole training steps, one model per norm, interleaved (see
repro.bench.steps; `repro-bench steps --help`). Without it:
Prints a table and writes JSON, CSV and a PNG figure to results/bench/<device>/ (or --out DIR).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

import torch

from repro.bench import (
    BACKEND_REGISTRY, DTYPES, OP_FAMILIES, PARTIALS, PASSES, BenchConfig, custom_grid, default_grid,
    expand_ops, render_ln_summary, render_table, run_benchmark, write_results,
)
from repro.bench.runner import NoBackendError
from repro.bench.timing import resolve_device


def _list_of(allowed):
    """argparse type: a comma-separated list whose items must be in `allowed`."""
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown value {bad[0] if bad else text!r}; allowed: {', '.join(allowed)} (comma-separated)")
        return list(dict.fromkeys(items))
    return parse


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return list(dict.fromkeys(values))


def _partials(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < p <= 1 for p in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios in (0, 1], got {text!r}")
    return list(dict.fromkeys(values))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="repro-bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="small grid and shorter timing (CPU: within 2 minutes)")
    p.add_argument("--out", metavar="DIR", help="where results go (default: results/bench/<device-name>)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when a GPU is visible, else the CPU")
    p.add_argument("--ops", type=_list_of(OP_FAMILIES), default=list(OP_FAMILIES),
                   help=f"ops to time (default: all of {','.join(OP_FAMILIES)})")
    p.add_argument("--partials", type=_partials, default=list(PARTIALS),
                   help=f"pRMSNorm ratios p (default: {','.join(map(str, PARTIALS))})")
    p.add_argument("--backends", type=_list_of(tuple(BACKEND_REGISTRY)), default=list(BACKEND_REGISTRY),
                   help="backends to time, those the device lacks are reported and left out "
                        f"(default: all of {','.join(BACKEND_REGISTRY)})")
    p.add_argument("--passes", type=_list_of(PASSES), default=list(PASSES),
                   help=f"passes to time (default: {','.join(PASSES)})")
    p.add_argument("--dtypes", type=_list_of(tuple(DTYPES)),
                   help="dtypes (default grid: bf16 plus a few fp16/fp32 shapes on a GPU, fp32 on a CPU)")
    p.add_argument("--M", type=_positive_ints, help="rows, comma-separated (replaces the default grid)")
    p.add_argument("--N", type=_positive_ints, help="row lengths, comma-separated (replaces the default grid)")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="torch.set_num_threads(N) before timing (default: torch's choice; recorded either way)")
    p.add_argument("--budget", type=_seconds, metavar="SECONDS",
                   help="start no new case after this many seconds of the run (set-up included); "
                        "the rest is recorded as skipped")
    return p


@contextlib.contextmanager
def _sigterm_interrupts():
    """`timeout` and schedulers stop a run with SIGTERM: raise KeyboardInterrupt instead, which
    the grid loop records as 'skipped: interrupted', so what was measured is still written."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_steps_parser() -> argparse.ArgumentParser:
    from repro.bench import steps

    p = argparse.ArgumentParser(
        prog="repro-bench steps", description=steps.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=steps.__doc__.split("\n\n", 1)[1])
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides as repro-train takes them, e.g. task=cifar10_cnn model.width=16 data.root=DIR")
    p.add_argument("--norms", type=_list_of(_norm_names()), default=["layernorm", "rmsnorm", "prmsnorm"],
                   help="norms to time (layernorm, the baseline of every ratio, is always added; "
                        "default: layernorm,rmsnorm,prmsnorm)")
    p.add_argument("--steps", type=_positive_int, default=30, help="timed rounds, one step of every norm each (default 30)")
    p.add_argument("--warmup", type=_positive_int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--norm-steps", type=int, default=10,
                   help="rounds timing the norm layers' forward and backward (hooks; default 10, 0 = skip)")
    p.add_argument("--budget", type=_seconds, metavar="SECONDS",
                   help="in each phase (step times, then norm times) start no new round after this many "
                        "seconds (at least 3 rounds are made)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the trainer's choice (trainer.device)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="torch.set_num_threads(N) first")
    p.add_argument("--out", metavar="DIR", required=True, help="where steps.json and steps.png go")
    return p


def _norm_names() -> tuple[str, ...]:
    from repro.nn import NORM_NAMES
    return NORM_NAMES


def steps_main(argv: list[str]) -> int:
    from repro.bench import steps

    parser = build_steps_parser()
    # overrides may stand anywhere, before, between or after the options, as repro-train takes them
    args = parser.parse_intermixed_args(argv)
    if args.norm_steps < 0:
        parser.error(f"--norm-steps: expected an integer >= 0, got {args.norm_steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = steps.StepsConfig(
        overrides=args.overrides, norms=args.norms, steps=args.steps, warmup=args.warmup,
        norm_steps=args.norm_steps, budget_s=args.budget, device=args.device,
        command=["repro-bench", "steps", *argv])
    try:
        result = steps.run_steps(config)
    except (steps.StepsError, FileNotFoundError) as error:
        parser.exit(2, f"repro-bench steps: error: {error}\n")
    print(steps.render_steps_table(result))
    paths = steps.write_steps(result, args.out)
    print(f"\nwrote {', '.join(map(str, paths))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["steps"]:
        return steps_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    if args.M or args.N:
        shapes = custom_grid(device.type, args.quick, args.M, args.N, args.dtypes)
    else:
        shapes = default_grid(device.type, args.quick, args.dtypes)
    if not shapes:
        parser.error(f"--dtypes: the default {device.type} grid has no shape in {','.join(args.dtypes)}; "
                     "give --M/--N too")
    config = BenchConfig(device=device, ops=expand_ops(args.ops, args.partials), shapes=shapes,
                         backends=args.backends, passes=args.passes, quick=args.quick, budget_s=args.budget,
                         command=["repro-bench", *argv])
    try:
        with _sigterm_interrupts():
            meta, records = run_benchmark(config)
    except NoBackendError as err:
        parser.error(f"--backends: {err}")
    print(render_table(records, meta))
    summary = render_ln_summary(records)
    if summary:
        print("\n" + summary)
    out_dir = Path(args.out) if args.out else Path("results") / "bench" / meta["device_slug"]
    paths = write_results(out_dir, "bench-quick" if args.quick else "bench", meta, records)
    print(f"\nwrote {', '.join(map(str, paths))} in {time.perf_counter() - started:.0f} s")
    if meta["interrupted"]:
        print("repro-bench: interrupted; the results above are partial", file=sys.stderr)
        return 130  # the shell's code for a run stopped by a signal
    return 0


if __name__ == "__main__":
    sys.exit(main())
