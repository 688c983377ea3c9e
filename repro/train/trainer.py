"""The one shared training loop. Task-specific work goes through the Task interface
(repro.tasks.base); this file knows nothing of images, tokens or norms beyond timing them.

Per optimizer step: `accumulate` micro-batches, each weighted by its item count across ranks so
token-batched tasks average correctly; optional gradient clipping; a step of a pure-function LR
schedule. Every `log_every` steps: train metrics averaged over the interval, step time and
throughput; on every `norm_timing_every`-th step the norm layers are timed (repro.track.NormTimer).
Every `eval_every` steps and at the end: evaluation sharded over the ranks and `checkpoints/best.pt` when the
monitored validation metric improves (no best.pt without a validation split); every `checkpoint_every` steps and at the end: `checkpoints/last.pt`.
A checkpoint holds the step, the data position (epoch, micro-batch), the model, optimizer and
scheduler, the partial log interval and every rank's RNG states, so a resumed run repeats the
uninterrupted one exactly.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm import tqdm

from repro.tasks.base import Task
from repro.track import NormPrecision, NormTimer, Tracker
from repro.track.drift import DriftSettings
from repro.util import option, register_schema

from . import checkpoint as ckpt
from . import distributed as dist
from .banner import ProgressLog, RunPlan, StepClock, start_banner
from .bf16_emulation import bf16_route, emulate_bf16_autocast
from .optim import build_scheduler

log = logging.getLogger(__name__)


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """trainer.precision as it runs on `device` ("auto": bf16 autocast on CUDA, fp32 elsewhere).
    bf16 on a CPU whose oneDNN has no bf16 support runs autocast's convolutions and matrix products
    in fp32 on bf16-rounded operands (repro.train.bf16_emulation: bf16's arithmetic at fp32 speed,
    where torch's own route took 15x the fp32 time); the log says so."""
    resolved = precision if precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if resolved == "bf16" and bf16_route(device) == "emulated":
        log.warning("trainer.precision=bf16 on a CPU without bf16 support in oneDNN (no AVX-512 or AMX): "
                    "autocast's convolutions and matrix products run in fp32 on bf16-rounded operands "
                    "(repro.train.bf16_emulation), as fast as fp32 and no faster")
    return resolved


DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainerSettings:
    """The `trainer` config group's schema (conf/trainer/default.yaml documents each option): a new
    trainer option is a field here, read where it is used, and its line in that file."""
    max_steps: Optional[int] = option(None, minimum=1)  # null: max_epochs decides
    max_epochs: int = option(200, minimum=1)
    eval_every: int = option(1000, minimum=1)
    log_every: int = option(50, minimum=1)
    checkpoint_every: int = option(1000, minimum=1)
    keep_checkpoints: int = option(0, minimum=0)  # also keep the newest N step checkpoints (for averaging)
    accumulate: int = option(1, minimum=1)
    grad_clip: float = option(0.0, minimum=0)
    norm_timing_every: int = option(50, minimum=0)
    progress_bar: bool = option(True)
    # Read by repro.train.run before the loop starts.
    precision: str = option("auto", choices=PRECISIONS)
    device: str = option("auto", choices=DEVICES)
    devices: int = option(1, minimum=1)
    deterministic: bool = option(False)
    resume: Optional[str] = option("auto")
    # DDP (trainer.devices > 1)
    sync_batchnorm: bool = option(True)  # under DDP, BatchNorm statistics over the global batch
    dist_timeout_min: float = option(60.0, minimum=1)  # collective timeout; covers long evaluations



register_schema("trainer", "trainer_schema", TrainerSettings)
class _Interval:
    """Sums over the steps since the last log line (item-weighted), kept as tensors so logging
    costs one device sync per interval rather than one per step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.step_sums: dict[str, torch.Tensor] = {}  # per-step values (grad norm), same on every rank
        self.items = 0
        self.steps = 0
        self.seconds = 0.0
        self.samples: list[dict] = []

    def add(self, values: dict, n_items: int) -> None:
        for key, value in values.items():
            weighted = torch.as_tensor(value, device=self.device, dtype=torch.float32).detach() * n_items
            self.sums[key] = self.sums[key] + weighted if key in self.sums else weighted
        self.items += n_items

    def add_per_step(self, key: str, value: torch.Tensor) -> None:
        self.step_sums[key] = self.step_sums.get(key, 0.0) + value.detach().float()

    def state(self) -> dict:
        return {"sums": self.sums, "step_sums": self.step_sums, "items": self.items, "steps": self.steps,
                "seconds": self.seconds}

    def load(self, state: dict) -> None:
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.step_sums = {k: v.to(self.device) for k, v in state["step_sums"].items()}
        self.items, self.steps, self.seconds = state["items"], state["steps"], state["seconds"]


class Trainer:
    def __init__(
        self, task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: dict,
        settings: TrainerSettings, *, drift: Optional[DriftSettings] = None, device: torch.device,
        world: dist.Dist, run_dir: Path, tracker: Optional[Tracker], autocast_dtype: Optional[torch.dtype],
        config: dict,
    ):
        self.task, self.model, self.optimizer, self.schedule = task, model, optimizer, schedule
        self.s, self.device, self.world, self.run_dir = settings, device, world, Path(run_dir)
        self.drift_settings = drift or DriftSettings()
        self.tracker, self.autocast_dtype, self.config = tracker, autocast_dtype, config
        # bf16 autocast on a CPU without oneDNN bf16: the matrix ops emulated (repro.train.bf16_emulation)
        self.bf16_emulated = autocast_dtype == torch.bfloat16 and bf16_route(device) == "emulated"
        # What the start banner shows besides the step counts (repro.train.banner.RunPlan's other
        # fields); None: no banner (e.g. ranks other than 0).
        self.banner: Optional[dict] = None
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metric, self.mode = task.monitor or (None, None)
        self.step = self.epoch = self.position = 0
        self.best: Optional[float] = None
        self.interval = _Interval(device)
        self.totals = {"seconds": 0.0, "steps": 0, "items": 0, "norm_share": [], "sampled_ms": []}
        self.last_train_loss: Optional[float] = None  # the last logged interval's, for the progress lines
        # Wall time of the run before this process (a resumed run), and when this process's part began.
        self.wall_time_before = 0.0
        self.fit_started = time.time()

    # ------------------------------------------------------------------------- set-up
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def resume_from(self, path: Path, state: dict) -> None:
        """Continue from a checkpoint's `state` (read from `path`), checked against this run first."""
        ckpt.check_fits(state, path, self.config, self.model, self.world.world_size)
        self.model.load_state_dict(state["model"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.best = state["best"]
        self.interval.load(state["interval"])
        # The summary's totals cover the whole run, the steps before the checkpoint included.
        self.totals = state.get("totals", self.totals)
        self.wall_time_before = state.get("wall_time_s", 0.0)
        # Optimizer, scheduler and RNG are restored when the loop starts (`_restore`).
        self._resume_state = state

    def _restore(self) -> None:
        state = getattr(self, "_resume_state", None)
        if state is None:
            return
        # After the scheduler exists: building it sets each group's lr to the step-0 value, and the
        # optimizer state loaded now brings back the lr of the checkpointed step.
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # Last: set-up since the checkpoint was read may have drawn random numbers.
        ckpt.set_rng_state(state["rng"][self.world.rank])
        self._resume_state = None

    def _save(self, name: str) -> None:
        rngs = dist.gather_objects(ckpt.rng_state(), self.world)  # collective: every rank calls it
        if not self.world.is_main:
            return
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": self.epoch,
            "position": self.position, "best": self.best, "interval": self.interval.state(),
            "rng": rngs, "config": self.config, "totals": self.totals, "wall_time_s": self.wall_time(),
        }
        ckpt.save_atomic(state, self.ckpt_dir / name)

    def _keep_step_checkpoint(self) -> None:
        """Keep last.pt as step_<step>.pt and drop all but the newest keep_checkpoints of them.
        A hard link costs no copy: last.pt is later replaced by a rename, never rewritten."""
        if self.s.keep_checkpoints < 1 or not self.world.is_main:
            return
        kept = self.ckpt_dir / f"step_{self.step:08d}.pt"
        kept.unlink(missing_ok=True)
        try:
            os.link(self.ckpt_dir / "last.pt", kept)
        except OSError:  # a filesystem without hard links
            shutil.copy2(self.ckpt_dir / "last.pt", kept)
        for old in sorted(self.ckpt_dir.glob("step_*.pt"))[: -self.s.keep_checkpoints]:
            old.unlink()

    # -------------------------------------------------------------------------- loop
    def wall_time(self) -> float:
        """Seconds the run has taken so far, across resumes."""
        return self.wall_time_before + time.time() - self.fit_started

    def fit(self) -> dict:
        with emulate_bf16_autocast(self.bf16_emulated):
            return self._fit()

    def _fit(self) -> dict:
        batches = self.task.train_batches()
        steps_per_epoch = len(batches) // self.s.accumulate
        if steps_per_epoch < 1:
            raise ValueError(
                f"an epoch has {len(batches)} micro-batches, fewer than trainer.accumulate={self.s.accumulate}"
            )
        self.total_steps = self.s.max_steps or self.s.max_epochs * steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, total_steps=self.total_steps,
                                         steps_per_epoch=steps_per_epoch, **self.schedule)
        if self.step == 0 and getattr(self, "_resume_state", None) is None:
            self.task.initialize(self.model)  # a fresh run only: a resumed one has its weights
        train_model = (
            torch.nn.parallel.DistributedDataParallel(self.model) if self.world.enabled else self.model
        )
        timer = NormTimer(self.model, self.s.norm_timing_every, self.device)
        precision = NormPrecision(self.model)  # the dtypes each norm ran at, from its first call
        drift = self.drift_settings.monitor(self.model)
        drift_warnings = []
        bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not (self.world.is_main and self.s.progress_bar),
            dynamic_ncols=True, desc=f"{self.task.name}",
        )
        micro_per_epoch = steps_per_epoch * self.s.accumulate
        clock_for_estimate = StepClock(self.total_steps, self.step, self.device.type)
        progress = (ProgressLog(self.total_steps, steps_per_epoch)
                    if self.world.is_main and not self.s.progress_bar else None)
        if self.banner is not None:
            log.info("\n%s", start_banner(RunPlan(**self.banner, total_steps=self.total_steps,
                                                  steps_per_epoch=steps_per_epoch, start_step=self.step)))
        self._restore()
        stream = batches.iter_epoch(self.epoch, self.position)
        self.model.train()
        clock = time.perf_counter()
        while self.step < self.total_steps:
            if self.position >= micro_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
                stream = batches.iter_epoch(self.epoch)
            micro = [next(stream) for _ in range(self.s.accumulate)]
            self.position += self.s.accumulate

            sampled = timer.due(self.step + 1)
            if sampled:
                self._sync()
                started = time.perf_counter()
            # A drift sample due on a timed step moves to the next one: its hooks would count as norm time.
            with timer.measure() if sampled else contextlib.nullcontext(), drift.observe(self.step + 1, defer=sampled):
                self._train_step(train_model, micro)
            if sampled:
                self._sync()
                step_ms = (time.perf_counter() - started) * 1e3
                norm = timer.result()
                norm["time/norm_share"] = (norm["time/norm_fwd_ms"] + norm["time/norm_bwd_ms"]) / step_ms
                self.interval.samples.append({**norm, "time/sampled_step_ms": step_ms})
            self.step += 1
            self.interval.steps += 1
            if precision is not None:
                self.norm_precision = precision.result()
                precision.close()
                precision = None
                if self.tracker is not None:
                    self.tracker.update_summary(norm_precision=self.norm_precision)
            drift_metrics, new_warnings = drift.collect()
            if drift_metrics and self.tracker is not None:
                self.tracker.log(self.step, "train", drift_metrics)
            if new_warnings and self.tracker is not None:
                drift_warnings += new_warnings
                self.tracker.update_summary(**{"drift/warnings": " | ".join(drift_warnings)})
            bar.update(1)
            estimate = clock_for_estimate.tick(self.step, time.perf_counter()) if self.banner is not None else None
            if estimate:
                log.info(estimate)

            if self.step % self.s.log_every == 0 or self.step == self.total_steps:
                self.interval.seconds += time.perf_counter() - clock
                self._log(bar)
                clock = time.perf_counter()
            line = progress.tick(self.step, time.perf_counter(), self.last_train_loss) if progress else None
            if line:
                log.info(line)
            at_eval = self.step % self.s.eval_every == 0 or self.step == self.total_steps
            if at_eval or self.step % self.s.checkpoint_every == 0:
                self.interval.seconds += time.perf_counter() - clock
                if at_eval:
                    self._evaluate()
                if self.step % self.s.checkpoint_every == 0 or self.step == self.total_steps:
                    self._save("last.pt")
                    self._keep_step_checkpoint()
                clock = time.perf_counter()
        bar.close()
        return self._final()

    def _train_step(self, model: nn.Module, micro: list) -> None:
        plain = len(micro) == 1 and not self.world.enabled
        n_local = 0
        for i, batch in enumerate(micro):
            # DDP all-reduces gradients on the last micro-batch's backward only.
            sync = i == len(micro) - 1 or not self.world.enabled
            with (contextlib.nullcontext() if sync else model.no_sync()):
                with self._autocast():
                    loss, n_items, logs = self.task.loss(model, batch)
                # Item-weighted sum; rescaled to the global mean below (plain steps need no rescale).
                (loss if plain else loss * n_items).backward()
            self.interval.add({"train/loss": loss, **logs}, n_items)
            n_local += n_items
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not plain:
            n_global = dist.all_reduce_sum(torch.tensor(float(n_local), device=self.device), self.world)
            # DDP averages over ranks, so multiply by world_size to turn the average into the sum.
            torch._foreach_mul_([p.grad for p in params], self.world.world_size / n_global.item())
        if self.s.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.s.grad_clip)
            self.interval.add_per_step("train/grad_norm", grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------------ records
    def _log(self, bar) -> None:
        iv = self.interval
        keys = sorted(iv.sums)
        # One collective (and one device sync): sums of every rank, then item-weighted means.
        packed = torch.stack([iv.sums[k] for k in keys] + [torch.tensor(float(iv.items), device=self.device)])
        packed = dist.all_reduce_sum(packed, self.world).tolist()
        items = packed[-1]
        metrics = {k: v / items for k, v in zip(keys, packed[:-1])}
        metrics.update({k: v.item() / iv.steps for k, v in iv.step_sums.items()})
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["time/step_ms"] = iv.seconds * 1e3 / iv.steps
        metrics[f"throughput/{self.task.throughput_unit}_per_s"] = items / iv.seconds
        for key in (iv.samples[0] if iv.samples else {}):
            metrics[key] = sum(sample[key] for sample in iv.samples) / len(iv.samples)
        self.totals["seconds"] += iv.seconds
        self.totals["steps"] += iv.steps
        self.totals["items"] += items
        self.totals["norm_share"] += [s["time/norm_share"] for s in iv.samples]
        self.totals["sampled_ms"] += [s["time/sampled_step_ms"] for s in iv.samples]
        iv.reset()
        if self.tracker is not None:
            self.tracker.log(self.step, "train", metrics)
        self.last_train_loss = metrics["train/loss"]
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", refresh=False)

    def _evaluate(self) -> None:
        # Sharded: every rank evaluates its share (the task gathers the results), so no rank idles
        # in a collective for a whole evaluation. Rank 0's buffers first: each rank then runs the
        # model rank 0 saves.
        dist.broadcast_buffers(self.model, self.world)
        self.model.eval()
        metrics = {}
        with torch.no_grad(), self._autocast():
            for split in self.task.eval_splits:
                metrics.update(self.task.evaluate(self.model, split))
        self.model.train()
        # Rank 0's numbers everywhere, so every rank takes the same best.pt decision (a collective).
        metrics = dist.broadcast_object(metrics, self.world)
        self.last_eval = metrics
        value = metrics.get(self.metric) if self.metric else None
        improved = value is not None and math.isfinite(value) and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        )
        if improved:
            self.best = value
        if self.tracker is not None:
            for split in self.task.eval_splits:
                self.tracker.log(self.step, split, {k: v for k, v in metrics.items() if k.startswith(f"{split}/")})
            best = {f"best/{self.metric}": self.best} if self.metric else {}
            self.tracker.update_summary(step=self.step, **metrics, **best)
        if improved:
            self._save("best.pt")

    def _final(self) -> dict:
        t = self.totals
        summary = {"step": self.step, "epoch": self.epoch, **getattr(self, "last_eval", {}),
                   "norm_precision": getattr(self, "norm_precision", None),
                   **self.task.summary_extras()}
        if self.metric:
            summary[f"best/{self.metric}"] = self.best
        summary.update({"totals/steps": t["steps"], "totals/items": t["items"], "totals/train_s": t["seconds"],
                        "totals/norm_samples": len(t["norm_share"])})
        if t["steps"]:
            summary["time/step_ms"] = t["seconds"] * 1e3 / t["steps"]
            summary[f"throughput/{self.task.throughput_unit}_per_s"] = t["items"] / t["seconds"]
        if t["norm_share"]:
            summary["time/norm_share"] = sum(t["norm_share"]) / len(t["norm_share"])
            summary["time/sampled_step_ms"] = sum(t["sampled_ms"]) / len(t["sampled_ms"])
        return summary
