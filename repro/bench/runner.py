"""One benchmark run: pick the device and backends, measure the copy bandwidth, time the grid,
and describe the run (versions, device, date, git SHA) so the numbers can be trusted later."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch

from .backends import BACKEND_REGISTRY, Op
from .suite import Shape, run_grid
from .timing import QUICK_PLAN, STANDARD_PLAN, copy_bandwidth, describe_device, keep_freed_memory, make_timer

BYTES_MODEL = ("bytes that must move: fwd x+y+weight(+bias); bwd dy+x+dx+weight+dweight(+dbias)+fp32 row "
               "stats; fwd+bwd the sum")
FORWARD_MODE = "fwd is a training forward: inputs require grad, so autograd records the graph"


class NoBackendError(ValueError):
    """None of the requested backends runs on the device."""


@dataclass
class BenchConfig:
    device: torch.device
    ops: list[Op]
    shapes: list[Shape]
    backends: list[str]               # registry names requested, in column order
    passes: list[str]
    quick: bool = False
    budget_s: Optional[float] = None  # start no case after this many seconds of the run
    progress: Optional[bool] = None   # None: a progress bar only on a terminal
    command: list[str] = field(default_factory=lambda: list(sys.argv))


def run_benchmark(config: BenchConfig) -> tuple[dict, list[dict]]:
    """Times the grid on the config's device; returns (metadata, records)."""
    started = time.perf_counter()
    load_before = _load_average()
    info = describe_device(config.device)
    plan = QUICK_PLAN if config.quick else STANDARD_PLAN
    timer = make_timer(config.device, plan)
    allocator = keep_freed_memory() if config.device.type == "cpu" else None

    status = {}
    for name in config.backends:
        backend = BACKEND_REGISTRY[name]
        reason = backend.unavailable_reason(config.device)
        status[name] = {"description": backend.description, "available": reason is None, "reason": reason}
    runnable = [BACKEND_REGISTRY[n] for n in config.backends if status[n]["available"]]
    if not runnable:
        reasons = "; ".join(f"{n}: {s['reason']}" for n, s in status.items())
        raise NoBackendError(f"none of the requested backends runs on {config.device.type} ({reasons})")
    ours = next((b.name for b in runnable if b.ours), None)

    copy_gbps, copy_bytes = copy_bandwidth(info, timer)
    records = run_grid(config.ops, config.shapes, runnable, config.passes, info, timer, copy_gbps,
                       config.budget_s, config.progress, start=started)
    meta = {
        "device": info.name, "device_type": config.device.type, "device_slug": info.slug,
        "device_details": info.details, "threads": info.threads, "cache_bytes": info.cache_bytes,
        # other processes on the host make CPU times (and GPU launch overhead) unreliable
        "load_average": {"before": load_before, "after": _load_average()}, "logical_cpus": os.cpu_count(),
        "copy_gbps": copy_gbps, "copy_bytes": copy_bytes,
        "timing": plan.describe(config.device), "bytes_model": BYTES_MODEL, "forward_mode": FORWARD_MODE,
        "params": "weight (and LayerNorm's bias) in the input's dtype; eps 1e-5 (LayerNorm), 1e-6 (RMSNorm)",
        "quick": config.quick, "budget_s": config.budget_s, "cpu_allocator": allocator,
        "backends": status, "ours": ours,
        "torch": torch.__version__, "triton": _version("triton"), "liger_kernel": _version("liger-kernel"),
        "python": platform.python_version(),
        # a copied tree without .git (a device machine) can name its commit in REPRO_GIT_SHA
        "git_sha": _git("rev-parse", "HEAD") or os.environ.get("REPRO_GIT_SHA"), "git_dirty": _dirty(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(config.command),
        "skipped": sum(r["status"] == "skipped" for r in records),
        "interrupted": any(r["reason"] == "interrupted" for r in records),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    return meta, records


def _load_average() -> Optional[float]:
    """The host's 1-minute load average (runnable processes), where the OS reports one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _dirty() -> Optional[bool]:
    """Whether tracked files differ from the commit (the numbers may not be the SHA's)."""
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return None if changes is None else bool(changes)


def _git(*args: str) -> Optional[str]:
    """Output of a git command in the repository holding this file; None outside a checkout."""
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()
