"""How the benchmark measures: the device it runs on, its timers, and a copy bandwidth to compare against.

CUDA: CUDA events around each call, median, after an untimed first call (compiles: Triton's JIT,
torch.compile) and warm-up calls. No L2 flush: the benchmark rotates through input sets larger
than L2 already, and a flush memset's dirty lines would be written back inside the next timed
call. Small cases, where the host's launch overhead rather than the kernels sets the time, are
timed as a CUDA graph of many calls (`triton.testing.do_bench_cudagraph`). CPU: wall-clock
(`time.perf_counter`) medians after warm-up calls. Both report the median because one slow
outlier (a context switch on a shared CPU, a clock ramp on a GPU) must not move the number.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from repro.track.host import cpu_model

# Fallback when the CPU's cache sizes cannot be read: a typical server last-level cache.
DEFAULT_CPU_CACHE_BYTES = 32 * 2**20


@dataclass(frozen=True)
class DeviceInfo:
    device: torch.device
    name: str              # the card, or the CPU model
    cache_bytes: int       # L2 on a GPU, the last-level cache on a CPU: what inputs must exceed
    threads: int           # torch.get_num_threads() (CPU work, and the host side on a GPU)
    details: dict          # extra facts for the metadata (SMs, memory, CUDA version)

    @property
    def slug(self) -> str:
        return slugify(self.name)


def slugify(name: str) -> str:
    """'Intel(R) Xeon(R) Processor' -> 'intel-xeon-processor': a folder name for a device."""
    name = re.sub(r"\((r|tm|c)\)", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-device"


def resolve_device(choice: str) -> torch.device:
    """'auto' is CUDA when a GPU is visible, else the CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(choice)


def cpu_cache_bytes() -> int:
    """The largest cache the CPU reports (the last level), from sysfs."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        match = re.fullmatch(r"(\d+)([KMG]?)", entry.read_text().strip())
        if match:
            sizes.append(int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)])
    return max(sizes, default=DEFAULT_CPU_CACHE_BYTES)


def describe_device(device: torch.device) -> DeviceInfo:
    threads = torch.get_num_threads()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return DeviceInfo(
            device, torch.cuda.get_device_name(device), props.L2_cache_size, threads,
            {"sm_count": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
             "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda},
        )
    return DeviceInfo(device, cpu_model(), cpu_cache_bytes(), threads,
                      {"machine": platform.machine(), "logical_cpus": os.cpu_count()})


# ---------------------------------------------------------------------------- timers
@dataclass(frozen=True)
class Timing:
    median_s: float
    p20_s: float           # the 20th and 80th percentiles show how noisy the median is
    p80_s: float
    reps: Optional[int]    # timed calls (a CUDA graph's replays each time many calls: None)
    method: str = "wall"   # "events" (CUDA events per call), "cudagraph", "wall" (CPU)


# timer(fn, graph=False): graph asks a CUDA timer to replay fn from a CUDA graph (small cases)
Timer = Callable[..., Timing]


@dataclass(frozen=True)
class TimingPlan:
    """How long to warm up and measure one function; the quick grid uses a lighter plan."""
    warmup_ms: float       # CUDA: warm-up time
    rep_ms: float          # CUDA: measuring time
    cpu_warmup: int        # CPU: untimed calls first
    cpu_reps: int          # CPU: at most this many timed calls ...
    cpu_min_reps: int      # ... at least this many ...
    cpu_budget_s: float    # ... and no more calls past this much time

    def describe(self, device: torch.device) -> str:
        if device.type == "cuda":
            return (f"median of CUDA-event times per call after an untimed compile call, warmup "
                    f"{self.warmup_ms:g} ms, rep {self.rep_ms:g} ms, no L2 flush (rotated inputs exceed L2); "
                    f"small cases: triton.testing.do_bench_cudagraph median (a graph of many calls)")
        return (f"time.perf_counter median of {self.cpu_min_reps}-{self.cpu_reps} calls "
                f"(stops adding calls after {self.cpu_budget_s:g} s) after {self.cpu_warmup} warm-up calls")


# quick: at least 3 timed calls, so a slow backend on a busy 2-core host still ends in minutes
QUICK_PLAN = TimingPlan(warmup_ms=10, rep_ms=30, cpu_warmup=1, cpu_reps=15, cpu_min_reps=3, cpu_budget_s=0.25)
STANDARD_PLAN = TimingPlan(warmup_ms=10, rep_ms=40, cpu_warmup=3, cpu_reps=50, cpu_min_reps=5, cpu_budget_s=1.5)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> Optional[str]:
    """Tell glibc's malloc to keep freed memory for reuse (CPU runs); returns what was done, or None.

    glibc serves blocks over 32 MiB with a fresh mmap and unmaps them on free, so every call that
    returns such a tensor page-faults its output in again: measured on a 2-core Xeon VM, 20-25 ms
    to allocate and fill 64 MiB against 4-5 ms to fill it in place. That cost is the allocator's,
    the same for every backend, and it hid the kernels' differences. Allocating everything from the
    heap and never trimming it removes it (as a caching allocator does on a GPU).
    """
    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None
    return "glibc mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1): freed memory is reused, not unmapped" if ok else None


def make_timer(device: torch.device, plan: TimingPlan) -> Timer:
    """A function timing `fn()` per call on the device."""
    if device.type == "cuda":
        return lambda fn, graph=False: _cuda_time(fn, plan, graph)

    def cpu_timer(fn, graph=False):
        for _ in range(plan.cpu_warmup):
            fn()
        times = []
        deadline = time.perf_counter() + plan.cpu_budget_s
        while len(times) < plan.cpu_reps and (len(times) < plan.cpu_min_reps or time.perf_counter() < deadline):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return _timing(times, len(times), "wall")
    return cpu_timer


def _timing(times_s: list[float], reps: Optional[int], method: str) -> Timing:
    if len(times_s) == 1:
        return Timing(times_s[0], times_s[0], times_s[0], reps, method)
    p20, _, _, p80 = statistics.quantiles(times_s, n=5, method="inclusive")
    return Timing(statistics.median(times_s), p20, p80, reps, method)


def _cuda_time(fn, plan: TimingPlan, graph: bool) -> Timing:
    fn()  # compiles (Triton JIT, torch.compile) and allocates outside any timing
    torch.cuda.synchronize()
    if graph:
        from triton.testing import do_bench_cudagraph

        try:
            median, p20, p80 = do_bench_cudagraph(fn, rep=plan.rep_ms, quantiles=[0.5, 0.2, 0.8])
            return Timing(median * 1e-3, p20 * 1e-3, p80 * 1e-3, None, "cudagraph")
        except Exception:  # noqa: BLE001 - a backend that cannot be captured is timed per call
            torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate_ms = max(start.elapsed_time(end) / 3, 1e-3)
    for _ in range(max(1, int(plan.warmup_ms / estimate_ms))):
        fn()
    reps = max(5, min(10_000, int(plan.rep_ms / estimate_ms)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for begin, finish in events:
        begin.record()
        fn()
        finish.record()
    torch.cuda.synchronize()
    return _timing([b.elapsed_time(f) * 1e-3 for b, f in events], reps, "events")


def copy_bandwidth(info: DeviceInfo, timer: Timer) -> tuple[float, int]:
    """GB/s of a plain same-device copy (bytes read + bytes written), and the buffer size used.

    GPU: source and destination of at least 1 GiB each (and twice L2), so the copy streams from
    memory at its sustained rate, as the rotated benchmark inputs do. CPU: twice the cache (at
    least 256 MiB, at most 1 GiB). On a CPU the copy uses normal stores, which first read each
    destination line (read for ownership); kernels that write large outputs with streaming stores
    (the cpu backend) skip that read and can exceed 100 %.
    """
    if info.device.type == "cuda":
        nbytes = max(2 * info.cache_bytes, 2**30)
    else:
        nbytes = min(max(2 * info.cache_bytes, 256 * 2**20), 2**30)
    src = torch.ones(nbytes, dtype=torch.uint8, device=info.device)
    dst = torch.empty_like(src)
    seconds = timer(lambda: dst.copy_(src)).median_s
    return 2 * nbytes / seconds / 1e9, nbytes


def pool_size(cache_bytes: int, bytes_per_entry: int, cap: int = 512) -> int:
    """How many input sets to rotate through so they span at least twice the cache (the cap
    only binds for tiny rows, whose timing is dominated by per-call overhead anyway)."""
    return max(1, min(cap, math.ceil(2 * cache_bytes / max(bytes_per_entry, 1))))
