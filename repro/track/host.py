"""What a run ran on, and whether the host was busy with other work while it ran.

Every training run (summary.json, key "environment") and every `repro-bench steps` result records
`host_info()` when it starts and `finish_host_info()` adds the load average when it ends:

    cpu_model      the CPU's model name from /proc/cpuinfo (never just "cpu")
    cpu_id         the CPU's generation where /proc/cpuinfo gives it ("family 25 model 1" on x86,
                   "implementer 0x41 part 0xd0c" on ARM): VMs name two generations "AMD EPYC" alike
    cpu_count      logical CPUs this process may run on
    cpu_capability the vector capability torch dispatches to (AVX512, AVX2, DEFAULT, ...)
    cpu_bf16       whether the CPU does bf16 arithmetic natively (`cpu_has_native_bf16`)
    cpu_threads    torch's intra-op threads
    gpu            the CUDA device's name, or null
    device         the GPU's name when there is one, else the CPU model (tables print `host_label`:
                   the model with its capability and CPUs)
    torch, triton, cuda, python, git_sha (the commit), git_dirty, host (the machine's name)
    loadavg_start  /proc/loadavg's 1, 5 and 15 minute averages when the run started
    loadavg_end    the same when it ended (absent while it runs, or if it crashed hard)
    cpu_times_start the host's busy CPU seconds (/proc/stat, VM steal included), this process's own
                   CPU seconds (all its threads) and the wall clock when the run started (Linux)
    other_cpu      at the end: other processes' CPU use while the run ran, in cores on average
                   (host busy minus own, over the wall time; Linux, same process only)
    contended      at the end: whether other processes competed for the CPU (`is_uncontended`),
                   null when the record cannot tell

The tables (repro.tables.render) take a training run's wall-clock times as a controlled speed
measurement only where `contended` is false.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Optional

import torch

# Load from other processes, in cores, that a run tolerates beyond the cores it leaves idle:
# a shell, an editor, a short `ls` come and go without changing a step's time measurably.
CONTENTION_TOLERANCE = 0.5
# The same for other_cpu, which counts CPU time actually used, not runnable threads: a tenth of a
# core on average (a 25-minute run beside a 2-minute single-threaded test job stays under it).
CPU_CONTENTION_TOLERANCE = 0.1


def loadavg() -> Optional[list[float]]:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def cpu_times() -> Optional[dict]:
    """The host's busy CPU seconds over all CPUs since boot (/proc/stat: user, nice, system, irq,
    softirq and steal, the time a VM's CPUs were taken by other guests), this process's own CPU
    seconds (all threads, plus its finished child processes: the workers a measurement spawns are
    its own load, not contention) and the wall clock; None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if len(ticks) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    own = os.times()
    return {"host_busy_s": (user + nice + system + irq + softirq + steal) / hz,
            "own_s": round(own.user + own.system + own.children_user + own.children_system, 3),
            "wall_s": round(time.time(), 3), "pid": os.getpid()}


def other_cpu(start: Optional[dict], end: Optional[dict]) -> Optional[float]:
    """Other processes' CPU use between two `cpu_times` readings of the same process, in cores
    averaged over the wall time between them; None when either is missing or they are from
    different processes (a run resumed elsewhere)."""
    if not start or not end or start.get("pid") != end.get("pid"):
        return None
    wall = end["wall_s"] - start["wall_s"]
    if wall <= 0:
        return None
    others = (end["host_busy_s"] - start["host_busy_s"]) - (end["own_s"] - start["own_s"])
    return round(max(0.0, others) / wall, 3)


def _first_cpu_info() -> dict[str, str]:
    """The first CPU's block of /proc/cpuinfo as {field: value}; {} where there is none."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # every CPU's block repeats the first one's fields
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {}
    return fields


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), from /proc/cpuinfo; the platform's answer elsewhere."""
    return _first_cpu_info().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_has_native_bf16() -> Optional[bool]:
    """Whether the x86 CPU has bf16 instructions (AVX512_BF16 or AMX), which CPU bf16 autocast
    needs to be fast: without them oneDNN emulates bf16 and a training step can take many times
    its fp32 time (measured: 15x, ConvPool-CNN-C width 32, 2-core AMD EPYC with AVX2 only; see
    results/steps/README.md). None where torch cannot tell (not x86)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not any(probes):  # a torch without these private probes
        return None
    return any(probe() for probe in probes if probe is not None)


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def host_info() -> dict:
    """Everything above but loadavg_end, taken now."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    status = _git("status", "--porcelain", "--untracked-files=no")
    cpu = cpu_model()
    return {
        "cpu_model": cpu, "cpu_id": cpu_id(), "cpu_count": cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_has_native_bf16(), "cpu_threads": torch.get_num_threads(), "gpu": gpu, "device": gpu or cpu,
        "torch": torch.__version__, "triton": _version("triton"), "cuda": torch.version.cuda,
        "python": platform.python_version(), "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status), "host": platform.node(),
        "loadavg_start": loadavg(), "cpu_times_start": cpu_times(),
    }


def finish_host_info(info: Optional[dict]) -> dict:
    """`info` with the load average and other processes' CPU use at the end of the run, and the
    contention verdict, added."""
    info = {**(info or {}), "loadavg_end": loadavg()}
    used = other_cpu(info.get("cpu_times_start"), cpu_times())
    if used is not None:
        info["other_cpu"] = used
    verdict = is_uncontended(info)
    return {**info, "contended": None if verdict is None else not verdict}


def cpu_id() -> Optional[str]:
    """The CPU's generation from /proc/cpuinfo: x86's family and model numbers (Zen 3 EPYC is family
    25 model 1, Zen 4 family 25 model 17), ARM's implementer and part; None where it gives neither.
    A VM's model name can be just "AMD EPYC" for both, and their speeds differ."""
    fields = _first_cpu_info()
    if "cpu family" in fields and "model" in fields:
        return f"family {fields['cpu family']} model {fields['model']}"
    if "CPU implementer" in fields and "CPU part" in fields:
        return f"implementer {fields['CPU implementer']} part {fields['CPU part']}"
    return None


def other_load(info: dict) -> Optional[float]:
    """Cores' worth of load from other processes while the run ran, in the worse of its two ends,
    or None when the run recorded no load average. At the start the run has not loaded the CPU
    yet; at the end the 1-minute average includes the run's own threads, which are taken off."""
    start, end = info.get("loadavg_start"), info.get("loadavg_end")
    own = min(info.get("cpu_threads") or 1, info.get("cpu_count") or 1)
    seen = []
    if start:
        seen.append(start[0])
    if end:
        seen.append(max(0.0, end[0] - own))
    return max(seen) if seen else None


def is_uncontended(info: Optional[dict], tolerance: float = CONTENTION_TOLERANCE) -> Optional[bool]:
    """Whether a run had the host to itself: other processes used no more than the cores the run
    left idle, plus a tolerance. Measured by `other_cpu` where the run recorded it (CPU time
    while it ran), else by the load average (`other_load`, with `tolerance`): that one also counts
    the minute before the run, so a run queued right behind another reads as contended. None when
    the run recorded too little to tell (runs from before host recording, or one that never
    ended): treat that as not known to be uncontended."""
    if not info or not info.get("cpu_count"):
        return None
    idle = max(0, info["cpu_count"] - min(info.get("cpu_threads") or 1, info["cpu_count"]))
    if info.get("other_cpu") is not None:
        return info["other_cpu"] <= idle + CPU_CONTENTION_TOLERANCE
    if not info.get("loadavg_start") or not info.get("loadavg_end"):
        return None
    return other_load(info) <= idle + tolerance


def host_label(env: Optional[dict]) -> str:
    """The kind of machine a run's or a measurement's times belong to, in words: the GPU's name,
    else the CPU model with its generation (where recorded), the vector capability torch dispatched
    to and the CPUs the process could use, e.g. "AMD EPYC (family 25 model 1, AVX2, 2 CPUs)". The
    model name alone does not tell the kind: the same "AMD EPYC" VM has come with AVX-512 in one
    session and AVX2 only in another, and bf16 steps ran 15x slower on the second; two AVX2 ones
    differed by 19-24 % in 2-thread step time (results/steps/README.md)."""
    env = env or {}
    if env.get("gpu"):
        return str(env["gpu"])
    name = env.get("cpu_model") or env.get("device") or "unknown device"
    details = [str(env["cpu_id"])] if env.get("cpu_id") else []
    details += [str(env["cpu_capability"])] if env.get("cpu_capability") else []
    details += [f"{env['cpu_count']} CPUs"] if env.get("cpu_count") else []
    return f"{name} ({', '.join(details)})" if details else str(name)


def host_notes(environments: dict[str, Optional[dict]]) -> list[str]:
    """Lines to print under a table built from several runs (run name -> its summary's
    "environment"): the commits and the kinds of machine (`host_label`) the runs came from when
    there is more than one, which runs started from uncommitted code, and which ran on a contended
    host or recorded too little to tell. [] when all is uniform, committed and quiet."""
    def mixed(what: str, key) -> None:  # a note when the runs fall into more than one group by `key`
        groups: dict[str, list[str]] = {}
        for name, env in environments.items():
            groups.setdefault(key(env or {}), []).append(name)
        if len(groups) > 1:
            notes.append(f"{what}: " + "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in sorted(groups.items())))

    notes = []
    mixed("runs on different kinds of machine (their time columns mix them)", host_label)
    mixed("runs from different commits", lambda env: env["git_sha"][:10] if env.get("git_sha") else "unknown commit")
    dirty = sorted(name for name, env in environments.items() if (env or {}).get("git_dirty"))
    if dirty:
        notes.append("runs started from a checkout with uncommitted changes (their code is not exactly their "
                     f"commit's): {', '.join(dirty)}")
    verdicts = {name: _recorded_uncontended(env) for name, env in environments.items()}
    contended = sorted(n for n, v in verdicts.items() if v is False)
    unknown = sorted(n for n, v in verdicts.items() if v is None)
    if contended:
        notes.append(f"runs on a contended host (other load beyond the idle cores): {', '.join(contended)}")
    if unknown:
        notes.append(f"runs that recorded no load average at start and end: {', '.join(unknown)}")
    return notes


def _recorded_uncontended(env: Optional[dict]) -> Optional[bool]:
    # the verdict the run stored when it ended, else one from its load record
    if env and env.get("contended") is not None:
        return not env["contended"]
    return is_uncontended(env)
