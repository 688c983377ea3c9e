"""Did a training run train? The one rule every table applies where the paper says a model
"failed to train" (its Transformer without a norm): the no-norm verdict of Table 4 and the
depth section beside it (repro.tables.depth) both judge runs with `judge`.

A run failed to train when any of these holds:
- its loss diverged: a logged training or validation loss is NaN or infinite (the run store
  writes those as null);
- it learned next to nothing: its final validation loss is not below FAILED_LOSS_FRACTION of
  ln V, the label-smoothed cross-entropy of a uniform guess over the V-token vocabulary (where a
  fresh model starts: the 3+3 CPU models logged 8.4-9.9 over their first 50 steps, ln 8000 = 9.0,
  and were at 0.42 ln V after 600 steps);
- it does not translate: its BLEU (the headline test BLEU, else the last validation BLEU) is
  below FAILED_BLEU.
A run with none of these measured is not judged (None).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from .collect import Run

FAILED_BLEU = 1.0
FAILED_LOSS_FRACTION = 0.6
LOSS_KEYS = (("train", "train/loss"), ("val", "val/loss"))

RULE = (f"a run failed to train when a logged loss went NaN/inf, when its final validation loss is not below "
        f"{FAILED_LOSS_FRACTION:g} x ln V (a uniform guess over the V-token vocabulary, where training starts), "
        f"or when its BLEU (test, else last validation) is below {FAILED_BLEU:g}")


@dataclass(frozen=True)
class Outcome:
    failed: Optional[bool]  # None: nothing measured to judge by
    reason: str


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def diverged_at(run: Run) -> Optional[int]:
    """The first logged step whose training or validation loss was NaN/inf (null in the store)."""
    steps = [row["step"] for row in run.rows for split, key in LOSS_KEYS
             if row.get("split") == split and key in row and not _finite(row[key])]
    if "val/loss" in run.summary and not _finite(run.summary["val/loss"]):
        steps.append(run.summary.get("step") or 0)
    return min(steps) if steps else None


def final_val_loss(run: Run) -> Optional[float]:
    """The last validation loss logged (NaN when it was NaN/inf: the store's null); None if none."""
    rows = [row for row in run.rows if row.get("split") == "val" and "val/loss" in row]
    if rows:
        value = rows[-1]["val/loss"]
    elif "val/loss" in run.summary:
        value = run.summary["val/loss"]
    else:
        return None
    return float(value) if _finite(value) else math.nan


def final_bleu(run: Run) -> Optional[float]:
    """The headline test BLEU (else the first test set's), else the last validation BLEU."""
    value = run.summary.get("test/bleu")
    if value is None:
        value = next((v for k, v in run.summary.items() if re.fullmatch(r"test/.+/bleu", k)), None)
    if not _finite(value):
        values = [v for _, v in run.series("val/bleu", "val")]
        value = values[-1] if values else run.summary.get("val/bleu")
    return float(value) if _finite(value) else None


def uniform_loss(run: Run) -> Optional[float]:
    """ln V for the run's vocabulary size (data.vocab_size), None when the config lacks it."""
    vocab = (run.config.get("data") or {}).get("vocab_size")
    return math.log(vocab) if isinstance(vocab, int) and vocab > 1 else None


def judge(run: Run) -> Outcome:
    """Trained or failed by the module's rule, with the measurement that decided it."""
    step = diverged_at(run)
    if step is not None:
        return Outcome(True, f"loss NaN/inf at step {step}")
    loss, bleu, start = final_val_loss(run), final_bleu(run), uniform_loss(run)
    loss = loss if loss is not None and math.isfinite(loss) else None
    if loss is not None and start is not None and loss >= FAILED_LOSS_FRACTION * start:
        return Outcome(True, f"final val loss {loss:.2f} = {loss / start:.2f} x ln V")
    if bleu is not None and bleu < FAILED_BLEU:
        return Outcome(True, f"BLEU {bleu:.2f} < {FAILED_BLEU:g}")
    measured = ([f"final val loss {loss:.2f}" + (f" = {loss / start:.2f} x ln V" if start else "")] if loss is not None
                else []) + ([f"BLEU {bleu:.2f}"] if bleu is not None else [])
    if not measured:
        return Outcome(None, "no validation loss or BLEU to judge by")
    return Outcome(False, ", ".join(measured))
