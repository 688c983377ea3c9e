"""`repro-tables analyze NAME`: run one of the analyses into --out. `all` runs those that need no
training (and partial-error when --run is given); shift-training trains short repro-train runs
(LayerNorm/RMSNorm x default/shifted weights x seeds: 12 by default, a small Transformer on
Multi30k); control-bits-training trains small MLPs on CIFAR-10 (24 runs, minutes on a CPU)."""
from __future__ import annotations

import argparse
from pathlib import Path

ANALYSES = ("invariance", "control-bits", "control-bits-training", "partial-error", "shift-training", "all")


def run_analyze(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="repro-tables analyze", description=__doc__)
    p.add_argument("name", choices=ANALYSES, help="which analysis; all = every one (partial-error needs --run)")
    p.add_argument("--out", metavar="DIR", default="results/analysis", help="output folder (default results/analysis)")
    p.add_argument("--run", metavar="RUN_DIR", help="partial-error: a finished repro-train run (config.yaml, checkpoints/)")
    p.add_argument("--weights", metavar="FILE",
                   help="partial-error: the model's weights (a weights-only file, e.g. the committed "
                        "results/analysis/checkpoints/*.pt, or a checkpoint) instead of RUN_DIR/checkpoints/last.pt")
    p.add_argument("--save-weights", metavar="FILE",
                   help="partial-error: first copy RUN_DIR/checkpoints/last.pt to FILE as a weights-only file "
                        "(fp32 state_dict, no optimizer state), then analyse that")
    p.add_argument("--train-if-missing", action="store_true",
                   help="partial-error: when --run has no checkpoint, train it from its config.yaml into outputs/retrained/NAME first (the store is left as it is)")
    p.add_argument("--data-root", metavar="DIR",
                   help="shift-training: the task's data (Multi30k folder; CIFAR-10 folder for cifar10_cnn); "
                        "control-bits-training: CIFAR-10 folder; partial-error: the run's data.root when its own is not here")
    p.add_argument("--task", default=None,
                   help="shift-training: multi30k_transformer (default) or cifar10_cnn with --set norm.conv_mode=channel")
    p.add_argument("--seeds", default="1,2,3", help="shift-training: comma list of seeds (default 1,2,3)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per run: shift-training (default 400), control-bits-training (default 600)")
    p.add_argument("--center", type=float, default=0.2, help="shift-training: the weights' centre (default 0.2)")
    p.add_argument("--runs", metavar="DIR", default="multirun/shift_training",
                   help="shift-training: where its runs go (default multirun/shift_training)")
    p.add_argument("--set", metavar="KEY=VALUE", nargs="+", default=[],
                   help="shift-training: extra repro-train overrides, e.g. model.dim=64")
    args = p.parse_args(argv)
    if args.name == "partial-error" and not args.run:
        p.error("partial-error needs --run RUN_DIR (a finished repro-train run)")
    if args.name in ("shift-training", "control-bits-training") and not args.data_root:
        p.error(f"{args.name} needs --data-root DIR (the task's data folder)")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be a comma list of ints, got {args.seeds!r}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
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
            partial_error.run(out, Path(args.run), args.data_root, train_if_missing=args.train_if_missing,
                              weights=Path(args.weights) if args.weights else None,
                              save_weights_to=Path(args.save_weights) if args.save_weights else None)
        except (FileNotFoundError, ValueError) as error:
            p.error(str(error))
        wrote.append("partial_error")
    if args.name == "shift-training":
        from . import shift_training

        from repro.util import ConfigError

        try:
            shift_training.run(out, args.data_root, Path(args.runs), task=args.task or shift_training.DEFAULT_TASK,
                               steps=args.steps or 400, center=args.center, seeds=seeds, overrides=args.set)
        except ConfigError as error:
            p.error(str(error))
        wrote.append("shift_training")
    if args.name == "control-bits-training":
        from . import control_bits_training as cbt

        setup = cbt.Setup() if args.steps is None else cbt.Setup(steps=args.steps)
        command = "repro-tables analyze " + " ".join(argv)
        cbt.run(out, cbt.load_cifar(args.data_root), setup, command=command)
        wrote.append("control_bits_training")
    for name in wrote:
        print(f"wrote {out / name}.md and {out / name}.png")
    return 0
