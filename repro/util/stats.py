"""Mean and sample standard deviation, as every table and analysis reports them."""
from __future__ import annotations

import statistics
from typing import Iterable, Optional


def mean_std(values: Iterable[float]) -> tuple[Optional[float], Optional[float]]:
    """(mean, sample std) of `values`: (None, None) for none, std None for a single value (one
    seed has no spread to report, rather than a spread of 0)."""
    values = [float(v) for v in values]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) >= 2 else None
