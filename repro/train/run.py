"""From a composed config to a finished run: validate, build task/model/optimizer, train, record.

This is the composition root `repro-train` calls (and tests call directly). Order matters:
the config is validated and the model built before any data is read, so a bad value costs
nothing; the run store exists before training starts and is closed, with W&B, whatever happens.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from repro.tasks import build_task_and_model
from repro.nn import NORMS, norm_factory, sync_batch_norm
from repro.track import DriftSettings, RunStore, Tracker, WandbSink
from repro.track.host import cpu_model, finish_host_info, host_info
from repro.track.wandb_sink import resolve_mode
from repro.util import ConfigError, StorageError, check_options, remove_stale_temporaries

from . import checkpoint as ckpt
from . import distributed as dist
from .config import validate_config
from .optim import build_optimization, parameter_count
from .trainer import Trainer, TrainerSettings, resolve_precision

log = logging.getLogger(__name__)


def resolve_device(name: str, world: dist.Dist) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model()})"


def norm_description(norm: DictConfig) -> str:
    """The norm as it will be built: name and the options that reach it."""
    factory = norm_factory(norm)
    options = {"eps": factory.eps, "partial": factory.partial if factory.spec.takes_partial else None,
               "eps_mode": factory.eps_mode if len(factory.spec.eps_modes) > 1 else None,
               "backend": factory.backend if "backend" in factory.spec.options else None}
    shown = ", ".join(f"{key}={value}" for key, value in options.items() if value is not None)
    return f"{factory.name} ({shown})" if shown else factory.name


def environment() -> dict:
    """What the run ran on (repro.track.host); its loadavg_end is added when the run ends."""
    return host_info()


def build_tracker(cfg: DictConfig, run_dir: Path, resume_step: Optional[int], group: Optional[str]) -> Tracker:
    store = RunStore(run_dir, resume_step=resume_step)
    config = OmegaConf.to_container(cfg, resolve=True)
    store.write_config(config)
    sink = None
    if cfg.logger.name == "wandb":
        lg = cfg.logger
        tags = [cfg.task.name, cfg.norm.name, *lg.tags]
        if NORMS[cfg.norm.name].takes_partial:
            tags.append(f"partial={cfg.norm.partial}")
        sink = WandbSink(
            run_dir, config=config, project=lg.project, entity=lg.entity, group=lg.group or group,
            tags=tags, job_type=lg.job_type, name=lg.run_name, mode=lg.mode,
        )
    return Tracker(store, sink)


def stop_file_logs_in(run_dir: Path) -> None:
    """Detach and close the logging file handlers writing into `run_dir` (Hydra's train.log), so
    that what is logged next reaches the console only. Hydra opens train.log for appending before
    the run's code starts; nothing has been written to it yet when a completed run is skipped."""
    root = logging.getLogger()  # where Hydra's job logging puts its file handler
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().parent == run_dir:
            root.removeHandler(handler)
            handler.close()


def train(cfg: DictConfig, run_dir, *, sweep_name: Optional[str] = None,
          on_start: Optional[Callable[[Path], None]] = None) -> dict:
    """Train as `cfg` says, recording into `run_dir`; return the final summary (rank 0's).
    `on_start(run_dir)` runs on rank 0 once the run is known to start or continue there (not for
    a completed run it skips, nor another run's directory it refuses): the CLI records Hydra's
    config there, so a skipped run's directory is left byte for byte as it was."""
    world = dist.world_from_env()
    validate_config(cfg, world.world_size)
    t = check_options(cfg.trainer, TrainerSettings, "trainer")
    device = resolve_device(t.device, world)
    dist.init(world, device, t.dist_timeout_min)
    tracker = None
    status = "failed"
    # Global switches set below; restored at the end so in-process callers (tests) are unaffected.
    saved_switches = (torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    try:
        # Rank 0's run dir everywhere: all ranks resume from the checkpoint rank 0 writes.
        run_dir = Path(dist.broadcast_object(str(Path(run_dir).resolve()), world))
        changed = {}  # the settings a continued run changes from its previous start (a larger budget)
        if t.resume == "auto":  # rank 0's files decide
            done, refusal = None, None
            if world.is_main:
                resolved = OmegaConf.to_container(cfg, resolve=True)
                done = ckpt.completed_summary(run_dir, resolved)  # this run, completed: nothing to do
                try:
                    changed = ckpt.changes_from_recorded_run(run_dir, resolved) if done is None else {}
                except ConfigError as error:  # another run's directory: every rank stops
                    refusal = str(error)
            done, changed, refusal = dist.broadcast_object((done, changed, refusal), world)
            if refusal is not None:
                raise ConfigError(refusal)
            if done is not None:
                stop_file_logs_in(run_dir)  # its train.log ends where the run ended
                log.info("%s holds this run, completed at step %s: skipped (trainer.resume=none retrains it)",
                         run_dir, done.get("step"))
                return done
            if changed:
                log.warning("%s: continuing its run with %s", run_dir,
                            ", ".join(f"{key}={ours} (was {theirs})" for key, (theirs, ours) in changed.items()))
        if on_start is not None and world.is_main:
            on_start(run_dir)
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            # warn_only: some CUDA backward kernels (max-pool) have no deterministic version.
            torch.use_deterministic_algorithms(True, warn_only=True)
        # Fixed input shapes every step: let cuDNN pick its fastest algorithms unless asked not to.
        torch.backends.cudnn.benchmark = not t.deterministic
        ckpt.seed_everything(cfg.seed)

        try:
            task, model = build_task_and_model(cfg)
        except ValueError as error:  # e.g. pRMSNorm keeping < 1 feature of some layer
            raise ConfigError(f"norm/model: {error}") from None
        model = model.to(device)
        if world.enabled and t.sync_batchnorm:
            sync_batch_norm(model)  # BatchNorm over the global batch, as one process would see it
        optimizer, schedule = build_optimization(model, cfg.optim)
        precision = resolve_precision(t.precision, device)
        trainer = Trainer(
            task, model, optimizer, schedule, t, drift=check_options(cfg.track, DriftSettings, "track"),
            device=device, world=world, run_dir=run_dir, tracker=None,
            autocast_dtype=torch.bfloat16 if precision == "bf16" else None,
            config=OmegaConf.to_container(cfg, resolve=True),
        )
        resume, may_fall_back = ckpt.resume_target(t.resume, run_dir)
        if world.is_main:  # a writer killed between its temporary file and the rename left one
            for folder in (run_dir, run_dir / "checkpoints"):
                for stale in remove_stale_temporaries(folder) if folder.is_dir() else []:
                    log.warning("removed %s, left by a write a crash interrupted", stale)
        if resume is not None:
            resume, state = ckpt.load_for_resume(resume, fall_back=may_fall_back)
            trainer.resume_from(resume, state)
            del state
            log.info("resuming from %s at step %d", resume, trainer.step)
        if world.is_main:
            trainer.banner = dict(
                task=cfg.task.name, parameters=parameter_count(model), norm=norm_description(cfg.norm),
                device=describe_device(device), threads=torch.get_num_threads(), run_dir=str(run_dir),
                wandb=resolve_mode(cfg.logger.mode) if cfg.logger.name == "wandb" else "off",
            )
            group = cfg.get("experiment_name") or sweep_name
            tracker = build_tracker(cfg, run_dir, trainer.step if resume else None, group)
            trainer.tracker = tracker
            tracker.update_summary(
                status="running", task=cfg.task.name, norm=cfg.norm.name,
                partial=cfg.norm.partial if NORMS[cfg.norm.name].takes_partial else None, seed=cfg.seed,
                parameters=parameter_count(model), precision=precision, world_size=world.world_size,
                environment=environment(), pid=os.getpid(), resumed_from=str(resume) if resume else None,
                resumed_step=trainer.step if resume else None,
                # every start of this run directory: a fresh one, then each resume
                starts=tracker.store.summary.get("starts", [])
                + [{"step": trainer.step, "checkpoint": str(resume) if resume else None, "changed": changed,
                    # how bf16 autocast's matrix ops ran from this start: a resume may land on another host
                    "bf16_matmul": ("emulated" if trainer.bf16_emulated else "native") if precision == "bf16" else None}],
                error=None,  # a resumed run's summary.json still holds the crash that stopped it
            )
        task.setup(device, world.rank, world.world_size)
        summary = trainer.fit()
        summary["wall_time_s"] = trainer.wall_time()  # across resumes
        if tracker is not None:
            tracker.update_summary(**summary)
        status = "completed"
        return summary
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException as error:
        if tracker is not None:
            try:
                tracker.update_summary(error=f"{type(error).__name__}: {error}")
            except StorageError as unrecorded:  # a full disk: the error above is the one to report
                log.warning("could not record the error in summary.json: %s", unrecorded)
        raise
    finally:
        if tracker is not None:
            try:
                try:
                    tracker.update_summary(environment=finish_host_info(tracker.store.summary.get("environment")))
                finally:
                    tracker.finish(status)  # closes the store and W&B even when the line above failed
            except StorageError as unrecorded:
                if status == "completed":
                    raise
                log.warning("could not record status %r in summary.json: %s", status, unrecorded)
        dist.shutdown(world)
        torch.use_deterministic_algorithms(saved_switches[0], warn_only=saved_switches[1])
        torch.backends.cudnn.benchmark = saved_switches[2]
