"""Checkpoints: atomic writes, loading with one-line errors for damaged or mismatched files, and
the RNG states that make a resumed run continue bit-exactly."""
from __future__ import annotations

import copy
import json
import logging
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml

from repro.nn import NORMS
from repro.util import ConfigError, StorageError, atomic_write

log = logging.getLogger(__name__)


class DamagedCheckpoint(StorageError):
    """A checkpoint file that exists but cannot be read (truncated, garbage)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path} is damaged ({reason})")
        self.path, self.reason = path, reason


def save_atomic(state: dict, path: Path) -> None:
    """A crash mid-write leaves the previous checkpoint intact, never a truncated one."""
    try:
        with atomic_write(path, "wb") as f:
            torch.save(state, f)
    except OSError as error:  # e.g. ENOSPC: say which file, and that the previous one is intact
        kept = "the previous one is intact" if Path(path).exists() else "no earlier one exists"
        raise StorageError(f"cannot write checkpoint {path}: {error.strerror or error}; {kept}. "
                           f"Free space, then rerun the same run directory to resume") from error


def load(path: Path) -> dict:
    """A checkpoint's state; DamagedCheckpoint (one line naming the file) when it cannot be read."""
    path = Path(path)
    try:
        # weights_only=False: our own checkpoints hold RNG states (numpy arrays, python tuples).
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - torch.load fails in many ways (zip, pickle, EOF)
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise DamagedCheckpoint(path, lines[-1][:160]) from None
    if not isinstance(state, dict) or "model" not in state:
        raise DamagedCheckpoint(path, "not a repro checkpoint: no model state")
    return state


def load_for_resume(path: Path, *, fall_back: bool) -> tuple[Path, dict]:
    """(path, state) of the checkpoint to resume from. A damaged `path` falls back, when
    `fall_back`, to the newest intact step_*.pt beside it (with a warning); otherwise it is a
    StorageError saying what to do."""
    try:
        return path, load(path)
    except DamagedCheckpoint as damaged:
        step_files = sorted(Path(path).parent.glob("step_*.pt"), reverse=True)
        intact = None
        for candidate in step_files:
            if candidate == path:
                continue
            try:
                intact = (candidate, load(candidate))
                break
            except DamagedCheckpoint:
                continue
        if fall_back and intact is not None:
            log.warning("%s; resuming from the newest intact step checkpoint %s (step %d) instead",
                        damaged, intact[0], intact[1]["step"])
            return intact
        where = (f"resume from the newest intact step checkpoint with trainer.resume={intact[0]}, "
                 if intact is not None else "")
        raise StorageError(f"cannot resume: {damaged}. Move it away, then {where}or start fresh with "
                           f"trainer.resume=none") from None


def _config_item(config: dict, *keys: str):
    for key in keys:
        config = config.get(key) if isinstance(config, dict) else None
    return config


def check_fits(state: dict, path: Path, config: dict, model: torch.nn.Module, world_size: int) -> None:
    """A ConfigError naming the first mismatch between a checkpoint and this run: task, norm,
    partial, the number of processes, or a parameter's name or shape."""
    saved = state.get("config") or {}
    checked = [("task", "name"), ("norm", "name")]
    if NORMS.get(_config_item(config, "norm", "name")) and NORMS[config["norm"]["name"]].takes_partial:
        checked.append(("norm", "partial"))  # the other norms ignore it
    for group, key in checked:
        theirs, ours = _config_item(saved, group, key), _config_item(config, group, key)
        if theirs is not None and theirs != ours:
            raise ConfigError(f"trainer.resume: {path} is from a run with {group}.{key}={theirs}, this run has "
                              f"{group}.{key}={ours} (resume with the same settings, or trainer.resume=none)")
    if len(state["rng"]) != world_size:
        raise ConfigError(f"trainer.resume: {path} was written by {len(state['rng'])} processes, this run has "
                          f"{world_size}; resume it with as many")
    ours = model.state_dict()
    theirs = state["model"]
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ConfigError(f"trainer.resume: {path} does not fit this model: {what} "
                          f"({len(missing)} missing, {len(extra)} unexpected parameters)")
    for key, value in ours.items():
        # Only tensors have shapes: a model's extra state (the Transformer's vocabulary) is a dict.
        if isinstance(value, torch.Tensor) and tuple(theirs[key].shape) != tuple(value.shape):
            raise ConfigError(f"trainer.resume: {path} does not fit this model: {key} has shape "
                              f"{tuple(theirs[key].shape)} there, {tuple(value.shape)} here")


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resume_target(setting: Optional[str], run_dir: Path) -> tuple[Optional[Path], bool]:
    """(checkpoint, may fall back) for `trainer.resume`: "auto" is this run dir's last.pt if there
    is one (re-running with the same hydra.run.dir continues it; a damaged one falls back to an
    intact step checkpoint); "none"/null starts fresh; a path is that checkpoint (or that run
    dir's last.pt), taken as given."""
    if setting in (None, "none"):
        return None, False
    if setting == "auto":
        path = run_dir / "checkpoints" / "last.pt"
        return (path if path.exists() else None), True
    path = Path(setting).expanduser()
    return (path / "checkpoints" / "last.pt" if path.is_dir() else path), False


# Options that change how a run is shown or where its data is read from (another checkout's
# path, or data staged to a cluster node), not what it computes: a completed run is the run asked
# for when everything else in its recorded config is the same.
# An experiment's per-norm lookup tables (by_norm) are not compared either: what they resolve to
# for the run's norm (optim.lr, model.weight_init, ...) is, and a table that grows a column for
# another setting does not change the runs already made.
NOT_THE_RUN = (("trainer", "progress_bar"), ("trainer", "resume"),
               ("data", "root"), ("data", "cache_dir"), ("data", "download"), ("by_norm",))
# Settings added after runs were recorded, with the value that does what those runs did: a
# recorded config without one ran with this value, so a rerun asking for it is the same run.
ADDED_SETTINGS = {("optim", "schedule", "decay_per"): "step"}


def _comparable(config: dict) -> dict:
    config = copy.deepcopy(config)
    for *groups, key in NOT_THE_RUN:
        parent = _config_item(config, *groups)
        if isinstance(parent, dict):
            parent.pop(key, None)
    for (*groups, key), before in ADDED_SETTINGS.items():
        parent = _config_item(config, *groups)
        if isinstance(parent, dict):
            parent.setdefault(key, before)
    return config


def completed_summary(run_dir: Path, config: dict) -> Optional[dict]:
    """The summary of the completed run `run_dir` holds when it is the run `config` asks for (the
    same recorded config, display options aside), else None. A sweep rerun to resume its killed job
    revisits every finished one: this lets it skip them without reading data or rewriting their
    records (the host and load they trained under). A completed store without its weights counts
    too: committed run stores leave them out, and a fresh checkout rerunning a sweep must not train
    the committed runs again (trainer.resume=none does). A last.pt that is there must be the
    final one: a damaged one goes the resume path, which reports it."""
    run_dir = Path(run_dir)
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.yaml"
    if not summary_path.is_file() or not config_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text())
        recorded = yaml.safe_load(config_path.read_text()) or {}
    except (ValueError, yaml.YAMLError):  # unreadable records: let the resume path report them
        return None
    if not isinstance(summary, dict) or summary.get("status") != "completed" or not isinstance(recorded, dict):
        return None
    if _comparable(recorded) != _comparable(config):
        return None
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        return summary
    try:
        final = load(last)
    except (FileNotFoundError, DamagedCheckpoint):
        return None
    return summary if final.get("step") == summary.get("step") else None


# What a rerun in the same run directory may change and still continue the run there: its budget
# (a larger one extends it) and how it is evaluated, recorded and logged. Anything else would leave weights trained under one config in a store
# whose config.yaml says another.
RESUME_MAY_CHANGE = (
    ("trainer", "max_steps"), ("trainer", "max_epochs"), ("trainer", "eval_every"), ("trainer", "log_every"),
    ("trainer", "checkpoint_every"), ("trainer", "keep_checkpoints"), ("trainer", "norm_timing_every"),
    ("trainer", "dist_timeout_min"), ("data", "eval_batch_size"), ("logger",), ("track",),
)  # besides NOT_THE_RUN


_UNSET = "(not set)"  # a setting one side's config does not have (a run recorded before it existed)


def _setting(name: str, value) -> str:
    return f"no {name}" if value == _UNSET else f"{name}={value}"


def _leaves(config, prefix: tuple = ()) -> dict:
    if isinstance(config, dict) and config:
        return {key: value for name, item in config.items() for key, value in _leaves(item, (*prefix, str(name))).items()}
    return {prefix: config}


def changes_from_recorded_run(run_dir: Path, config: dict) -> dict[str, list]:
    """{dotted key: [recorded, asked]} for the settings of `config` that differ from the run
    `run_dir` already holds (its config.yaml), all of them ones a continued run may change (its
    budget, its logging); {} when it holds none or the same. A ConfigError names the first other
    difference: continuing there would mix two runs, and starting fresh would overwrite one."""
    config_path = Path(run_dir) / "config.yaml"
    try:
        recorded = yaml.safe_load(config_path.read_text())
    except (FileNotFoundError, ValueError, yaml.YAMLError):  # nothing (readable) recorded yet
        return {}
    if not isinstance(recorded, dict):
        return {}
    theirs, ours = _leaves(_comparable(recorded)), _leaves(_comparable(config))
    changed = {key: [theirs.get(key, _UNSET), ours.get(key, _UNSET)] for key in sorted(set(theirs) | set(ours))
               if theirs.get(key, _UNSET) != ours.get(key, _UNSET)}
    # name a setting both runs have first: "model.width=32 there, 16 here" says more than a new option
    for key, (recorded_value, asked) in sorted(changed.items(), key=lambda item: _UNSET in item[1]):
        if not any(key[: len(free)] == free for free in RESUME_MAY_CHANGE):
            name = ".".join(key)
            raise ConfigError(
                f"{run_dir} holds another run: {_setting(name, recorded_value)} there, {_setting(name, asked)} here "
                f"({len(changed)} settings differ); give this run its own directory (hydra.run.dir, or "
                f"hydra.sweep.dir for -m), or overwrite that run with trainer.resume=none")
    return {".".join(key): values for key, values in changed.items()}
