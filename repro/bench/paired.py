"""Paired, interleaved timing: speed ratios that survive a busy machine.

Timing A for a while and then B for a while compares two different machines whenever the load
changes in between (another process starts, the clock ramps). Here the candidates take turns,
one call each per round (ABCABC...), and each round gives one ratio per candidate against the
baseline timed in that same round. Load that comes and goes hits both sides of a ratio alike,
so the median ratio holds where absolute times do not; a bootstrap over rounds gives its 95 %
interval. The order within a round rotates so that no candidate always runs right after
another (cache and allocator state left by the previous call).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Ratio:
    median: float                 # median over rounds of time(candidate) / time(baseline)
    ci95: tuple[float, float]     # bootstrap 95 % interval of that median
    rounds: int

    def to_json(self) -> dict:
        return {"ratio": self.median, "ci95": list(self.ci95), "rounds": self.rounds}


def interleave(fns: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 2,
               timer: Optional[Callable[[Callable[[], object]], float]] = None,
               budget_s: Optional[float] = None) -> dict[str, list[float]]:
    """Seconds per call of every function, round by round: after `warmup` untimed rounds, each of
    `rounds` rounds calls every function once, in an order rotated by one each round. `timer(fn)`
    returns the seconds one call took (default: wall clock); `budget_s` stops adding rounds once
    that much time has passed (at least 3 timed rounds are always made). Lists are index-aligned:
    entry i of every list comes from round i."""
    if not fns:
        raise ValueError("interleave needs at least one function to time")
    timer = timer or wall_clock
    names = list(fns)
    for r in range(warmup):
        for name in _rotated(names, r):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    for r in range(rounds):
        if budget_s is not None and r >= 3 and time.perf_counter() - started > budget_s:
            break
        for name in _rotated(names, r):
            times[name].append(timer(fns[name]))
    return times


def wall_clock(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _rotated(names: list[str], shift: int) -> list[str]:
    shift %= len(names)
    return names[shift:] + names[:shift]


def paired_ratio(candidate: list[float], baseline: list[float], *, resamples: int = 2000,
                 seed: int = 0) -> Ratio:
    """Median of the per-round ratios candidate[i] / baseline[i], with a percentile-bootstrap 95 %
    interval over rounds (seeded: the same times give the same interval)."""
    if len(candidate) != len(baseline) or not candidate:
        raise ValueError(f"paired times must be non-empty and of equal length, got {len(candidate)} "
                         f"and {len(baseline)}")
    ratios = np.asarray(candidate, dtype=float) / np.asarray(baseline, dtype=float)
    median = float(np.median(ratios))
    if len(ratios) < 2 or np.all(ratios == ratios[0]):
        return Ratio(median, (median, median), len(ratios))
    result = stats.bootstrap((ratios,), np.median, n_resamples=resamples, confidence_level=0.95,
                             method="percentile", random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Ratio(median, (float(ci.low), float(ci.high)), len(ratios))


def median_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1e3


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share a point: two ratio measurements agree when theirs do."""
    return a[0] <= b[1] and b[0] <= a[1]
