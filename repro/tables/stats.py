"""Intervals for the tables' verdicts: Welch's t-interval for a difference of means over seeds,
the one-sample t-interval of paired (same-seed) differences
and, on the log scale, for a ratio of times.

With 2-3 seeds a normal interval (±2·SE) is far too narrow: the t quantile with ~2 degrees of
freedom is ~4.3, so the intervals come from scipy's t distribution with Welch-Satterthwaite
degrees of freedom.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float   # the point estimate (difference of means, or ratio)
    low: float
    high: float
    df: float         # Welch-Satterthwaite degrees of freedom (inf when both spreads are 0)

    def text(self, digits: int = 2, signed: bool = True) -> str:
        fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
        return f"[{fmt.format(self.low)}, {fmt.format(self.high)}]"


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Optional[Interval]:
    """The t-interval of mean(a) - mean(b) without assuming equal variances; None when either
    side has fewer than two values (no spread, no interval)."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = float(stats.tmean(a) - stats.tmean(b))
    if len(set(a)) == 1 and len(set(b)) == 1:  # identical values within each group: no spread
        return Interval(diff, diff, diff, math.inf)
    with warnings.catch_warnings():  # one group of identical values: scipy warns, the answer holds
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(a, b, equal_var=False)
        ci = test.confidence_interval(confidence)
    return Interval(diff, float(ci.low), float(ci.high), float(test.df))


def ratio_interval(numerator: Sequence[float], denominator: Sequence[float],
                   confidence: float = CONFIDENCE) -> Optional[Interval]:
    """mean(numerator) / mean(denominator) with the Welch interval of the difference of log
    values, mapped back: times are positive and their noise multiplicative."""
    if any(v <= 0 for v in (*numerator, *denominator)):
        return None
    logs = welch_interval([math.log(v) for v in numerator], [math.log(v) for v in denominator], confidence)
    if logs is None:
        return None
    ratio = float(stats.tmean(numerator) / stats.tmean(denominator))
    return Interval(ratio, math.exp(logs.low), math.exp(logs.high), logs.df)


def paired_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> Optional[Interval]:
    """The t-interval of the mean of paired differences (e.g. shifted minus default run of the
    same seed): a one-sample t-interval on the differences, df = n - 1; None below two pairs."""
    if len(differences) < 2:
        return None
    mean = float(stats.tmean(differences))
    if len(set(differences)) == 1:  # no spread: scipy returns nan bounds
        return Interval(mean, mean, mean, math.inf)
    test = stats.ttest_1samp(differences, 0.0)
    ci = test.confidence_interval(confidence)
    return Interval(mean, float(ci.low), float(ci.high), float(test.df))
