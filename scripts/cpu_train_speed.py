"""CPU training-speed figures of the shared trainer on ConvPool-CNN-C (numbers for the notes, not tests).

For each norm: step time and throughput with norm timing off, then with every step timed (norm
forward/backward ms and norm share, and the sampled step's cost over an untimed one), plus a bare
PyTorch loop over the same model and batches for the trainer's own overhead. Runs are interleaved
so background load hits every variant alike; each prints one JSON line.

    python -m repro.data.fixtures /tmp/cifar_speed --train 1200 --test 20
    python scripts/cpu_train_speed.py /tmp/cifar_speed [--width 96] [--batch 32] [--steps 20] [--threads 2]

Speed does not depend on the pixels, and the trainer evaluates once at the end: generated data with
a tiny test set keeps that evaluation out of the way (real CIFAR-10 works too, only slower).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from repro.tasks import build_task_and_model
from repro.train import compose_config, train
from repro.train.optim import OptimConfig, build_optimizer, build_scheduler
from repro.util import check_options

CONF = Path(__file__).resolve().parents[1] / "conf"


def config(args, norm: str, timing_every: int):
    overrides = [
        f"norm={norm}", "norm.partial=0.125", f"data.root={args.root}", f"model.width={args.width}",
        f"data.batch_size={args.batch}", "data.val_size=0", f"trainer.max_steps={args.steps}",
        f"trainer.log_every={args.steps}", f"trainer.eval_every={10**9}", f"trainer.checkpoint_every={10**9}",
        f"trainer.norm_timing_every={timing_every}", "trainer.progress_bar=false", "logger=none",
    ]
    return compose_config(overrides, conf_dir=CONF)


def trainer_run(args, norm: str, timing_every: int) -> dict:
    # eval_every is past the end, but the trainer evaluates once at the end: timed apart from steps.
    with tempfile.TemporaryDirectory() as run_dir:
        summary = train(config(args, norm, timing_every), run_dir)
    keys = ("time/step_ms", "throughput/images_per_s", "time/norm_share", "time/sampled_step_ms")
    return {k: summary[k] for k in keys if k in summary}


def bare_loop(args, norm: str) -> dict:
    """The same model, optimizer, schedule and batches, with nothing but the step itself."""
    cfg = config(args, norm, 0)
    torch.manual_seed(cfg.seed)
    task, model = build_task_and_model(cfg)
    task.setup(torch.device("cpu"))
    optimizer = build_optimizer(model.parameters(), check_options(cfg.optim, OptimConfig, "optim"))
    scheduler = build_scheduler(optimizer, name="paper", total_steps=args.steps)
    batches = task.train_batches().iter_epoch(0)
    started = time.perf_counter()
    for _ in range(args.steps):
        images, labels = next(batches)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    seconds = time.perf_counter() - started
    return {"time/step_ms": seconds * 1e3 / args.steps, "throughput/images_per_s": args.steps * args.batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--norms", default="layernorm,rmsnorm,prmsnorm")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for repeat in range(args.repeats):
        for norm in args.norms.split(","):
            for variant, run in (("bare", lambda: bare_loop(args, norm)),
                                 ("trainer", lambda: trainer_run(args, norm, 0)),
                                 ("trainer+timing_every_step", lambda: trainer_run(args, norm, 1))):
                row = {"norm": norm, "variant": variant, "repeat": repeat, "width": args.width,
                       "batch": args.batch, "steps": args.steps, "threads": args.threads, **run()}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
