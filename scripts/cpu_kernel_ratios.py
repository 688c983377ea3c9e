#!/usr/bin/env python
"""The CPU kernels' speed against F.layer_norm, forward + backward, for each capability build.

    python scripts/cpu_kernel_ratios.py                         # every build this CPU runs, both allocator modes
    python scripts/cpu_kernel_ratios.py --builds AVX2 --rounds 40 --out results/bench/cpu-ratios.json
    python scripts/cpu_kernel_ratios.py --builds AVX512,AVX2 --rounds 40 --threads 2 --processes 3

Targets (issue 12): RMSNorm and pRMSNorm <= 0.8x F.layer_norm, our LayerNorm <= 1.1x, at
M in {4096, 16384}, N in {512, 1024}, fp32, on AVX2 and AVX-512 builds alike.

Each build runs in its own process (REPRO_CPU_CAPABILITY=AVX2 forces the AVX2 build on an AVX-512
machine; one process loads one build). Within it, F.layer_norm and our ops take turns call by
call (repro.bench.paired): a round times one forward+backward of each, gradients reset outside
the timed call, and the ratio is the median over rounds of ours / F.layer_norm's in the same
round, with a bootstrap 95 % interval, so it holds on a busy machine where absolute times do not.

Allocator modes: "glibc" leaves malloc as a training process has it (outputs of 32 MiB or more
are mmap'd and page-faulted afresh on every call; our kernels ask for huge pages on such outputs,
F.layer_norm does not -- run with REPRO_CPU_HUGEPAGES=0 to compare without); "kept" tells glibc
to keep freed memory (repro-bench's setting), which isolates the kernels' own time.
Each build is compiled on first use (a minute or two), then cached.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SHAPES = [(4096, 512), (4096, 1024), (16384, 512), (16384, 1024)]
OPS = ("rmsnorm", "prmsnorm", "layernorm")
TARGETS = {"rmsnorm": 0.8, "prmsnorm": 0.8, "layernorm": 1.1}
PRMS_PARTIAL = 0.0625


def measure(rounds: int, keep_freed: bool, threads: int | None) -> dict:
    """This process's build: {"M x N": {op: {ratio, ci95, rounds, median_ms}, "F.layer_norm": {median_ms}}}."""
    import torch
    import torch.nn.functional as F

    from repro.bench.paired import interleave, median_ms, paired_ratio
    from repro.bench.timing import keep_freed_memory
    from repro.kernels import cpu as cpu_kernels
    from repro.kernels import layer_norm, rms_norm

    allocator = keep_freed_memory() if keep_freed else None
    if threads:
        torch.set_num_threads(threads)
    assert cpu_kernels.available(), cpu_kernels.build_error()
    torch.manual_seed(0)
    results = {}
    for m, n in SHAPES:
        x = torch.randn(m, n, requires_grad=True)
        w = (1 + 0.1 * torch.randn(n)).requires_grad_()
        b = (0.1 * torch.randn(n)).requires_grad_()
        dy = torch.randn(m, n)
        forwards = {
            "F.layer_norm": lambda: F.layer_norm(x, (n,), w, b, 1e-5),
            "rmsnorm": lambda: rms_norm(x, w, 1e-6, backend="cpu"),
            "prmsnorm": lambda: rms_norm(x, w, 1e-6, partial=PRMS_PARTIAL, backend="cpu"),
            "layernorm": lambda: layer_norm(x, w, b, 1e-5, backend="cpu"),
        }

        def timed(forward):
            def call():
                x.grad = w.grad = b.grad = None  # fresh gradients each call, as zero_grad(set_to_none) gives training
                forward().backward(dy)
            return call

        times = interleave({name: timed(f) for name, f in forwards.items()}, rounds, warmup=3)
        base = times["F.layer_norm"]
        cell = {"F.layer_norm": {"median_ms": median_ms(base)}}
        for op in OPS:
            ratio = paired_ratio(times[op], base)
            cell[op] = {**ratio.to_json(), "median_ms": median_ms(times[op])}
        results[f"{m}x{n}"] = cell
    return {"capability": cpu_kernels.build_capability(), "allocator": allocator or "glibc defaults",
            "threads": torch.get_num_threads(), "shapes": results}


def run_build(capability: str, rounds: int, keep_freed: bool, threads: int | None) -> dict:
    env = {**os.environ, "REPRO_CPU_CAPABILITY": capability}
    cmd = [sys.executable, __file__, "--worker", "--rounds", str(rounds)]
    cmd += ["--keep-freed"] if keep_freed else []
    cmd += ["--threads", str(threads)] if threads else []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {capability} build's worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def render(results: list[dict]) -> str:
    """One row per build, allocator and shape. One process: its ratio [bootstrap interval]; several
    (`--processes`): the median over processes (min-max) and how many were over the target, since
    one process's interval covers round-to-round noise only, not the spread between processes."""
    lines = ["| build | allocator | M x N | F.layer_norm ms | RMSNorm | pRMSNorm | LayerNorm |",
             "|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for res in results:
        groups.setdefault((res["capability"], res["allocator"]), []).append(res)
    for (capability, allocator), runs in groups.items():
        alloc = "kept" if allocator != "glibc defaults" else "glibc"
        for shape in runs[0]["shapes"]:
            cells = [run["shapes"][shape] for run in runs]
            row = [capability, alloc, shape, f"{statistics.median(c['F.layer_norm']['median_ms'] for c in cells):.2f}"]
            for op in OPS:
                ratios = [c[op]["ratio"] for c in cells]
                if len(cells) == 1:
                    ci = cells[0][op]["ci95"]
                    flag = "" if ratios[0] <= TARGETS[op] else " (over)"
                    row.append(f"{ratios[0]:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]{flag}")
                else:
                    over = sum(r > TARGETS[op] for r in ratios)
                    row.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                               + (f" {over}/{len(ratios)} over" if over else ""))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--builds", default=None,
                   help="comma-separated capabilities, e.g. AVX512,AVX2 (default: every one this CPU runs but DEFAULT)")
    p.add_argument("--allocator", choices=("both", "glibc", "kept"), default="both")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds per shape (default 30)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--processes", type=int, default=1,
                   help="measure each build in this many worker processes, one after another (default 1); "
                        "the table then gives the median over them and their range")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep-freed", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.rounds, args.keep_freed, args.threads)))
        return 0

    import torch

    from repro.kernels.cpu import CAPABILITIES
    from repro.track.host import finish_host_info, host_info

    native = torch.backends.cpu.get_cpu_capability()
    runnable = CAPABILITIES[1: CAPABILITIES.index(native) + 1] if native in CAPABILITIES else ()
    builds = args.builds.split(",") if args.builds else list(reversed(runnable)) or ["DEFAULT"]
    modes = {"both": (False, True), "glibc": (False,), "kept": (True,)}[args.allocator]
    host = host_info()
    if args.processes < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    results = [{**run_build(c, args.rounds, keep, args.threads), "process": i + 1}
               for i in range(args.processes) for c in builds for keep in modes]
    host = finish_host_info(host)
    table = render(results)
    print(f"CPU: {host['cpu_model']} ({host['cpu_count']} cores, torch sees {host['cpu_capability']}), "
          f"torch {host['torch']}, commit {host['git_sha']}")
    print(f"load average (1, 5, 15 min): start {host['loadavg_start']}, end {host['loadavg_end']}")
    print("ratio = median over rounds of ours / F.layer_norm (fwd+bwd, fp32), "
          + ("[bootstrap 95 % interval]; " if args.processes == 1 else
             f"median over {args.processes} processes (min-max, how many over the target); ")
          + f"targets: RMSNorm, pRMSNorm (p={PRMS_PARTIAL}) <= 0.8, LayerNorm <= 1.1\n")
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"host": host, "results": results},
                                             indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
