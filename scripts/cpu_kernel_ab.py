#!/usr/bin/env python
"""Two revisions of the C++ CPU kernels side by side: a git revision's against the working tree's.

    python scripts/cpu_kernel_ab.py                                   # HEAD against the working tree
    python scripts/cpu_kernel_ab.py --base HEAD~1 --shapes 4096x512,16384x1024 --rounds 100 --threads 2
    python scripts/cpu_kernel_ab.py --base-without-flag=-ffp-contract=off    # what a compiler flag does

Builds the base revision's kernels/cpu/norms.cpp under another op namespace (repro_cpu_norms_base),
loads it into the same process as the working tree's build, and times every kernel of both
(forward and backward of RMSNorm, pRMSNorm with k = N/8 and LayerNorm, fp32; on request the
per-channel mode's, `--kernels "rms fwd pc,rms bwd pc,ln fwd pc,ln bwd pc"`) call by call in turn
(repro.bench.paired.interleave), the cache flushed before every call (--flush-mib; otherwise a call
could read what the previous one left in cache). Prints, per shape and kernel, the medians of both
and the median of the per-round new / base ratio with a bootstrap 95 % interval
(repro.bench.paired.paired_ratio), and the largest difference between the two builds' outputs
(every tensor a kernel returns), so a change that is faster but computes something else shows.
A kernel change is typically worth 5-30 %, less than the spread
between processes on a shared VM; timing both in one process, in turns, is what makes it visible.

Freed memory is kept (repro.bench.timing.keep_freed_memory), so outputs come from the heap in both
builds and the page-fault cost of fresh mappings (the allocator's, not the kernels') stays out.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = "kernels/cpu/norms.cpp"
BASE_LIBRARY = "repro_cpu_norms_base"
KERNELS = ("rms fwd", "rms bwd", "prms fwd", "prms bwd", "ln fwd", "ln bwd")
# ConvNorm's mode: one gain and bias per row, PER_CHANNEL_CHANNELS channels in turn (the rows of
# a (sample, channel) conv map over its positions). Only on request (--kernels): revisions before
# 0eb55af have no such mode.
PER_CHANNEL_KERNELS = ("rms fwd pc", "rms bwd pc", "ln fwd pc", "ln bwd pc")
PER_CHANNEL_CHANNELS = 32


def shapes(text: str) -> list[tuple[int, int]]:
    from repro.bench.suite import parse_mxn

    out = []
    for item in text.split(","):
        try:
            m, n = parse_mxn(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--shapes must be MxN[,MxN...], e.g. 4096x512, got {item!r}") from None
        if m < 1 or n < 8:
            raise argparse.ArgumentTypeError(f"--shapes: M must be >= 1 and N >= 8 (pRMSNorm takes N/8), got {item!r}")
        out.append((m, n))
    return out


def renamed_library(source: str, old: str, new: str) -> str:
    """The source with its TORCH_LIBRARY namespace `old` renamed `new`, so that two builds of it
    can be loaded into one process."""
    marker = f"TORCH_LIBRARY({old}, m)"
    if source.count(marker) != 1:
        raise ValueError(f"expected exactly one {marker!r} in the kernel source, found {source.count(marker)}")
    return source.replace(marker, f"TORCH_LIBRARY({new}, m)")


def base_source(rev: str, library: str, dest: Path) -> tuple[Path, str]:
    """Write revision `rev`'s norms.cpp, its ops renamed into `library`, to dest; returns the path
    and the revision's commit."""
    from repro.kernels.cpu import LIBRARY

    try:
        commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
        text = subprocess.run(["git", "show", f"{commit}:{SOURCE}"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise SystemExit(f"--base {rev!r}: cannot read {SOURCE} at that revision ({detail.strip().splitlines()[-1]})")
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "norms_base.cpp"
    text = renamed_library(text, LIBRARY, library)
    if not path.exists() or path.read_text() != text:  # unchanged source: the cached build stays valid
        path.write_text(text)
    return path, commit


def kernel_calls(lib, m: int, n: int) -> dict:
    """The kernels of one build on one (m, n) fp32 input, as argument-free callables: the six
    per-feature ones, and the per-channel ones where m is a multiple of PER_CHANNEL_CHANNELS."""
    import torch

    torch.manual_seed(0)
    x, dy = torch.randn(m, n), torch.randn(m, n)
    w, b = 1 + 0.1 * torch.randn(n), 0.1 * torch.randn(n)
    k = max(1, n // 8)
    _, rstd = lib.rms_norm_forward(x, w, None, 1e-6, n, False)
    _, prstd = lib.rms_norm_forward(x, w, None, 1e-6, k, False)
    _, mean, lrstd = lib.layer_norm_forward(x, w, b, 1e-5)
    calls = {
        "rms fwd": lambda: lib.rms_norm_forward(x, w, None, 1e-6, n, False),
        "rms bwd": lambda: lib.rms_norm_backward(dy, x, w, rstd, 1e-6, n, False, False),
        "prms fwd": lambda: lib.rms_norm_forward(x, w, None, 1e-6, k, False),
        "prms bwd": lambda: lib.rms_norm_backward(dy, x, w, prstd, 1e-6, k, False, False),
        "ln fwd": lambda: lib.layer_norm_forward(x, w, b, 1e-5),
        "ln bwd": lambda: lib.layer_norm_backward(dy, x, w, mean, lrstd, True),
    }
    c = PER_CHANNEL_CHANNELS
    if m % c == 0:
        wc, bc = 1 + 0.1 * torch.randn(c), 0.1 * torch.randn(c)
        _, crstd = lib.rms_norm_forward(x, wc, bc, 1e-6, n, False, c)
        _, cmean, clrstd = lib.layer_norm_forward(x, wc, bc, 1e-5, c)
        calls.update({
            "rms fwd pc": lambda: lib.rms_norm_forward(x, wc, bc, 1e-6, n, False, c),
            "rms bwd pc": lambda: lib.rms_norm_backward(dy, x, wc, crstd, 1e-6, n, False, True, c),
            "ln fwd pc": lambda: lib.layer_norm_forward(x, wc, bc, 1e-5, c),
            "ln bwd pc": lambda: lib.layer_norm_backward(dy, x, wc, cmean, clrstd, True, c),
        })
    return calls


def max_difference(a, b) -> float:
    """The largest absolute difference between two kernels' outputs (tuples of tensors)."""
    return max(float((x - y).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b) if x is not None and y is not None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="HEAD", help="git revision to compare the working tree against (default HEAD)")
    p.add_argument("--shapes", type=shapes, default=shapes("4096x512,4096x1024,16384x512"))
    p.add_argument("--kernels", default=",".join(KERNELS),
                   help=f"comma-separated subset of {', '.join(KERNELS)} (the default) and ConvNorm's "
                        f"per-channel {', '.join(PER_CHANNEL_KERNELS)} ({PER_CHANNEL_CHANNELS} channels)")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--flush-mib", type=int, default=64, help="cache flush before each call, in MiB (0: none)")
    p.add_argument("--base-without-flag", action="append", default=[], metavar="FLAG",
                   help="build the base without this flag of the kernels' compile flags (repeatable), "
                        "e.g. --base-without-flag=-ffp-contract=off to time what it does")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = sorted(set(kernels) - set(KERNELS) - set(PER_CHANNEL_KERNELS))
    if unknown or not kernels:
        p.error(f"--kernels: unknown {unknown or 'empty list'}; allowed: {', '.join(KERNELS + PER_CHANNEL_KERNELS)}")
    if any(k in PER_CHANNEL_KERNELS for k in kernels):
        odd = [f"{m}x{n}" for m, n in args.shapes if m % PER_CHANNEL_CHANNELS]
        if odd:
            p.error(f"--shapes: the per-channel kernels take M as a multiple of {PER_CHANNEL_CHANNELS} channels, "
                    f"got {', '.join(odd)}")
    if args.rounds < 3 or args.threads < 1 or args.flush_mib < 0:
        p.error("--rounds must be >= 3, --threads >= 1 and --flush-mib >= 0")

    import torch

    from repro.bench.paired import interleave, median_ms, paired_ratio, wall_clock
    from repro.bench.timing import keep_freed_memory
    from repro.kernels import cpu as cpu_kernels
    from repro.track.host import finish_host_info, host_info

    flags = cpu_kernels.compile_flags(cpu_kernels.build_capability())
    strange = [f for f in args.base_without_flag if f not in flags]
    if strange:
        p.error(f"--base-without-flag: {', '.join(strange)} not among the build's flags: {' '.join(flags)}")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    new = cpu_kernels.load()
    root = cpu_kernels.extensions_root() / "ab"
    path, commit = base_source(args.base, BASE_LIBRARY, root)
    without = "".join(f" without {f}" for f in args.base_without_flag)
    print(f"building {args.base} ({commit[:10]}){without} as torch.ops.{BASE_LIBRARY} ...", flush=True)
    base = cpu_kernels.build_source(path, BASE_LIBRARY, tuple(args.base_without_flag))
    flush = torch.empty((args.flush_mib << 20) // 4)

    def flushed(fn) -> float:
        if flush.numel():
            flush.fill_(1.0)
        return wall_clock(fn)

    info = host_info()
    rows = []
    print(f"base {args.base} ({commit[:10]}){without} against the working tree, build {cpu_kernels.build_capability()}, "
          f"{args.threads} thread(s), {args.rounds} rounds, cache flush {args.flush_mib} MiB; medians in ms")
    print("| M x N | kernel | base ms | new ms | new / base [95 % CI] | max abs difference |")
    print("|---|---|---|---|---|---|")
    for m, n in args.shapes:
        calls = {"base": kernel_calls(base, m, n), "new": kernel_calls(new, m, n)}
        fns = {f"{k} {tag}": calls[tag][k] for k in kernels for tag in ("base", "new")}
        times = interleave(fns, args.rounds, warmup=3, timer=flushed)
        for k in kernels:
            ratio = paired_ratio(times[f"{k} new"], times[f"{k} base"])
            row = {"shape": f"{m}x{n}", "kernel": k, "base_ms": median_ms(times[f"{k} base"]),
                   "new_ms": median_ms(times[f"{k} new"]), "ratio": ratio.median, "ratio_ci95": list(ratio.ci95),
                   "max_abs_difference": max_difference(calls["new"][k](), calls["base"][k]())}
            rows.append(row)
            print(f"| {m}x{n} | {k} | {row['base_ms']:.3f} | {row['new_ms']:.3f} | "
                  f"{ratio.median:.2f} [{ratio.ci95[0]:.2f}, {ratio.ci95[1]:.2f}] | "
                  f"{row['max_abs_difference']:.2e} |", flush=True)
    info = finish_host_info(info)
    print(f"host: {info.get('cpu_model')}, other processes {info.get('other_cpu')} cores, "
          f"contended {info.get('contended')}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"base": args.base, "base_commit": commit,
                                        "base_without_flags": args.base_without_flag, "threads": args.threads,
                                        "rounds": args.rounds, "flush_mib": args.flush_mib, "host": info,
                                        "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
