#!/usr/bin/env python
"""What fusing ConvNorm's per-channel gain and bias into the kernels saves, on the conv maps of
the Table 10 model (ConvPool-CNN-C) at a width, paired and interleaved.

    python scripts/conv_norm_affine.py                        # width 32, batch 100, fp32 and bf16
    python scripts/conv_norm_affine.py --width 96 --dtypes float32 --rounds 60 --out r.json

In spatial mode a conv norm normalizes each (sample, channel) map over its H x W positions and
then applies a gain and offset per channel. "fused" runs that affine inside the kernels
(repro.kernels' affine_dim=-2: what ConvNorm does for LayerNorm, RMSNorm and pRMSNorm);
"unfused" normalizes the rows and applies the affine with a torch op after it (what ConvNorm
did before, and still does for norms whose op has no per-channel mode). BatchNorm2d (torch's
fused kernel, the table's BatchNorm row) and F.group_norm with one group per channel (torch's
fused kernel for exactly LayerNorm's spatial mode) are timed beside them for scale.

Every candidate runs forward + backward (input, gain and bias gradients) on the same input,
taking turns call by call (repro.bench.paired); the ratios fused / unfused come with bootstrap
95 % intervals over rounds. Prints a table per dtype; --out also writes it as JSON.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from repro import kernels
from repro.bench.paired import interleave, median_ms, paired_ratio
from repro.bench.timing import describe_device, keep_freed_memory
from repro.nn import BatchNorm2d, ConvNorm
from repro.track.host import finish_host_info, host_info

NORMS = {
    "layernorm": functools.partial(kernels.layer_norm, eps=1e-5),
    "rmsnorm": functools.partial(kernels.rms_norm, eps=1e-6),
    "prmsnorm": functools.partial(kernels.rms_norm, eps=1e-6, partial=0.125),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def conv_shapes(width: int, batch: int) -> list[tuple[int, int, int, int]]:
    """The distinct normalized maps of ConvPool-CNN-C on 32 x 32 images (repro.models): three
    convs at width over 32 x 32, three at 2 x width over 16 x 16, three at 2 x width over 6 x 6."""
    return [(batch, width, 32, 32), (batch, 2 * width, 16, 16), (batch, 2 * width, 6, 6)]


def forward_backward(module, x, dy):
    def call():
        x.grad = None
        for p in module.parameters():
            p.grad = None
        module(x).backward(dy)
    return call


def candidates(shape, dtype) -> dict:
    n, c, h, w = shape
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    dy = torch.randn(shape, dtype=dtype)
    calls = {}
    for name, op in NORMS.items():
        for fused in (True, False):
            module = ConvNorm(c, op, fused_affine=fused)
            with torch.no_grad():
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
            calls[f"{name} {'fused' if fused else 'unfused'}"] = forward_backward(module, x, dy)
    calls["BatchNorm2d"] = forward_backward(BatchNorm2d(c).to(dtype), x, dy)
    # fp32 parameters on a bf16 map, as repro.kernels' route to F.group_norm passes them
    gain, offset = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)

    def group_norm():
        x.grad = gain.grad = offset.grad = None
        F.group_norm(x, c, gain, offset, 1e-5).backward(dy)
    calls["F.group_norm"] = group_norm
    return calls


def measure(shape, dtype, rounds: int) -> dict:
    times = interleave(candidates(shape, dtype), rounds, warmup=3)
    row = {"shape": list(shape), "median_ms": {k: median_ms(v) for k, v in times.items()}, "fused_vs_unfused": {}}
    for name in NORMS:
        row["fused_vs_unfused"][name] = paired_ratio(times[f"{name} fused"], times[f"{name} unfused"]).to_json()
    return row


def print_table(dtype_name: str, rows: list[dict]) -> None:
    print(f"\n{dtype_name}: forward + backward, median ms; fused / unfused [95 % interval]")
    names = list(rows[0]["median_ms"])
    print("| N x C x H x W | " + " | ".join(names) + " | " + " | ".join(f"{n} fused/unfused" for n in NORMS) + " |")
    print("|" + "---|" * (1 + len(names) + len(NORMS)))
    for row in rows:
        ratios = [row["fused_vs_unfused"][n] for n in NORMS]
        print("| " + "x".join(map(str, row["shape"])) + " | "
              + " | ".join(f"{row['median_ms'][n]:.2f}" for n in names) + " | "
              + " | ".join(f"{r['ratio']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" for r in ratios) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=32, help="the model's base width (paper: 96)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--dtypes", default="float32,bfloat16", help=f"comma-separated subset of {', '.join(DTYPES)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = sorted(set(dtypes) - set(DTYPES))
    if unknown or not dtypes:
        p.error(f"--dtypes: unknown {unknown or 'empty list'}; allowed: {', '.join(DTYPES)}")
    if args.width < 1 or args.batch < 1 or args.threads < 1 or args.rounds < 3:
        p.error("--width, --batch and --threads must be >= 1 and --rounds >= 3")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    device = describe_device(torch.device("cpu"))
    host = host_info()
    print(f"{device.name}, {args.threads} thread(s), kernels backend {kernels.ops.resolve_backend('auto', torch.empty(0))}"
          f", width {args.width}, batch {args.batch}, {args.rounds} rounds")
    results = {"device": device.name, "threads": args.threads, "width": args.width, "batch": args.batch,
               "rounds": args.rounds, "argv": sys.argv[1:] if argv is None else list(argv), "dtypes": {}}
    for name in dtypes:
        rows = [measure(shape, DTYPES[name], args.rounds) for shape in conv_shapes(args.width, args.batch)]
        results["dtypes"][name] = rows
        print_table(name, rows)
    results["host"] = finish_host_info(host)  # CPU, capability, commit, load: what it ran on
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
