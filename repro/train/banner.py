"""What whoever starts a run sees first: one screen saying what is about to run and where it goes,
then, once the first steps are timed, how long the whole run will take.

On a CPU a full paper schedule takes days (ConvPool-CNN-C at width 96: ~1.75 s/step, 90,000 steps
on 2 cores, ~44 h), so the estimate there also points to the README's quick CPU run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

QUICK_CPU_RUN = "README.md, Training: \"a quick CPU run\" (~15 min on 2 cores)"
ESTIMATE_AFTER_STEPS = 20  # steps timed (after the first, which carries one-off costs) before estimating


@dataclass
class RunPlan:
    task: str
    parameters: int
    norm: str
    device: str
    threads: int
    total_steps: int
    steps_per_epoch: int
    run_dir: str
    wandb: str  # "off", or the resolved W&B mode (online / offline / disabled)
    start_step: int = 0


def start_banner(plan: RunPlan) -> str:
    epochs = plan.total_steps / plan.steps_per_epoch
    lines = [
        f"task        {plan.task}",
        f"model       {plan.parameters:,} parameters",
        f"norm        {plan.norm}",
        f"device      {plan.device}, {plan.threads} CPU thread{'s' if plan.threads != 1 else ''}",
        f"steps       {plan.total_steps:,} ({epochs:.3g} epochs of {plan.steps_per_epoch:,} steps)"
        + (f", resuming at step {plan.start_step:,}" if plan.start_step else ""),
        f"run dir     {plan.run_dir}",
        f"W&B         {plan.wandb}",
    ]
    width = max(map(len, lines))
    return "\n".join(["=" * width, *lines, "=" * width])


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def time_estimate(seconds_per_step: float, steps_left: int, device_type: str) -> str:
    """One line: the time left at the measured speed, and on a CPU
    where the rest takes over an hour, where the quick CPU run is."""
    line = (f"estimate: {duration(seconds_per_step * steps_left)} for the remaining {steps_left:,} steps "
            f"at {seconds_per_step:.3g} s/step")
    if device_type == "cpu" and seconds_per_step * steps_left > 3600:
        line += f"; for a quick CPU run see {QUICK_CPU_RUN}"
    return line


class StepClock:
    """Times steps ESTIMATE_AFTER_STEPS after the first one and then, once, gives the estimate."""

    def __init__(self, total_steps: int, start_step: int, device_type: str):
        self.total, self.start, self.device_type = total_steps, start_step, device_type
        self.begin: Optional[float] = None
        self.done = False

    def tick(self, step: int, now: float) -> Optional[str]:
        """Call after each step (`step` = steps done); returns the estimate line once."""
        if self.done:
            return None
        if step == self.start + 1:
            self.begin = now
            return None
        timed = step - self.start - 1
        if self.begin is None or timed < min(ESTIMATE_AFTER_STEPS, self.total - self.start - 1) or timed < 1:
            return None
        self.done = True
        return time_estimate((now - self.begin) / timed, self.total - step, self.device_type)


PROGRESS_LINES = 10  # with the progress bar off, a log line at each tenth of the run


class ProgressLog:
    """The progress bar's information as log lines, for runs whose output goes to a file (nohup,
    SLURM, `trainer.progress_bar=false`), where a bar is either absent or a wall of carriage returns:
    at each tenth of the run, the step, the epoch, the last logged loss, the speed since this
    process started and the time left at that speed."""

    def __init__(self, total_steps: int, steps_per_epoch: int, lines: int = PROGRESS_LINES):
        self.total, self.per_epoch = total_steps, steps_per_epoch
        self.every = max(1, -(-total_steps // lines))  # ceil: at most `lines` lines over a run
        self.begin: Optional[float] = None

    def tick(self, step: int, now: float, loss: Optional[float]) -> Optional[str]:
        """Call after each step (`step` = steps done); returns a line at each milestone."""
        if self.begin is None:  # the first step of this process carries one-off costs: time from its end
            self.begin, self.begin_step = now, step
            return None
        if step % self.every != 0 and step != self.total:
            return None
        rate = (now - self.begin) / (step - self.begin_step)
        epoch = -(-step // self.per_epoch)  # the epoch this step belongs to, counted from 1
        epochs = -(-self.total // self.per_epoch)
        parts = [f"step {step:,}/{self.total:,} ({100 * step / self.total:.0f} %)", f"epoch {epoch}/{epochs}"]
        if loss is not None:
            parts.append(f"train loss {loss:.4g}")
        parts.append(f"{rate:.3g} s/step")
        if step < self.total:
            parts.append(f"{duration(rate * (self.total - step))} left")
        return ", ".join(parts)
