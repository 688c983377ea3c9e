"""Paired, interleaved timing (repro.bench.paired): its order, its pairing and its statistics, with
fake clocks -- no timed assertions."""
from __future__ import annotations

import itertools

import pytest

from repro.bench.paired import interleave, intervals_overlap, paired_ratio


def test_rounds_call_every_function_once_in_a_rotating_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleave(fns, rounds=4, warmup=1, timer=lambda fn: fn() or 1.0)
    assert calls == list("abc" + "abc" "bca" "cab" "abc")  # warm-up, then rounds rotated by one
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}


def test_budget_stops_adding_rounds_but_keeps_at_least_three(monkeypatch):
    clock = itertools.count(0.0, 10.0)  # every perf_counter read moves time 10 s on
    monkeypatch.setattr("repro.bench.paired.time.perf_counter", lambda: next(clock))
    times = interleave({"a": lambda: None, "b": lambda: None}, rounds=50, warmup=0,
                       timer=lambda fn: 1.0, budget_s=1.0)
    assert len(times["a"]) == len(times["b"]) == 3


def _contended(base_a, base_b, rounds, slow_rounds, factor):
    """Per-round times of two functions whose true costs are base_a and base_b, with every round in
    slow_rounds `factor` times slower for both (a neighbour taking the CPU), plus a little jitter."""
    a, b = [], []
    for r in range(rounds):
        load = factor if r in slow_rounds else 1.0
        jitter = 1 + 0.01 * ((r * 7) % 5 - 2)
        a.append(base_a * load * jitter)
        b.append(base_b * load / jitter)
    return a, b


def test_the_paired_ratio_survives_load_that_comes_and_goes():
    quiet_a, quiet_b = _contended(0.7, 1.0, 40, slow_rounds=set(), factor=1.0)
    busy_a, busy_b = _contended(0.7, 1.0, 40, slow_rounds=set(range(0, 40, 2)), factor=2.5)
    quiet, busy = paired_ratio(quiet_a, quiet_b), paired_ratio(busy_a, busy_b)
    assert quiet.median == pytest.approx(0.7, rel=0.05) and busy.median == pytest.approx(0.7, rel=0.05)
    assert intervals_overlap(quiet.ci95, busy.ci95)
    # while a ratio of separate medians, taken as two unpaired runs (one quiet, one busy), is off
    unpaired = sorted(quiet_a)[20] / sorted(busy_b)[20]
    assert not quiet.ci95[0] <= unpaired <= quiet.ci95[1]


def test_interval_contains_the_median_and_narrows_with_more_rounds():
    a, b = _contended(0.8, 1.0, 10, slow_rounds=set(), factor=1.0)
    few = paired_ratio(a, b)
    a, b = _contended(0.8, 1.0, 200, slow_rounds=set(), factor=1.0)
    many = paired_ratio(a, b)
    for r in (few, many):
        assert r.ci95[0] <= r.median <= r.ci95[1]
    assert many.ci95[1] - many.ci95[0] <= few.ci95[1] - few.ci95[0]
    assert paired_ratio(a, b) == many  # seeded: the same times give the same interval


def test_unpaired_or_empty_times_are_an_error():
    with pytest.raises(ValueError, match="equal length"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        paired_ratio([], [])
    with pytest.raises(ValueError, match="at least one"):
        interleave({}, rounds=3)
