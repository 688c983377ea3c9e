"""Collect training runs: from local run-store trees, or from W&B into an on-disk cache.

A run is what the run store writes (repro.track.RunStore): `config.yaml` (resolved config),
`metrics.jsonl` (one row per logged step: `step`, `split`, metric keys) and `summary.json`
(final metrics, timing, environment). W&B runs are fetched once (`wandb.Api()`: config, summary,
full history via `scan_history`) and written into the cache *as run-store directories* with the
same writer, so a cached sweep is read back by the same code as a local one and tables rebuild
offline.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import yaml

from repro.nn import NORMS
from repro.track import RunStore, read_metrics
from repro.util import StorageError, mean_std, write_json_atomic

log = logging.getLogger(__name__)

WANDB_RUN_FILE = "wandb_run.json"   # written beside a cached W&B run: id, path, url, state
WANDB_ID_FILE = "wandb_id.txt"      # written by the W&B sink in a local run directory
SPLITS = ("train", "val", "test")


@dataclass
class Run:
    """One training run as read from its files."""

    path: Path
    config: dict
    summary: dict
    rows: list = field(default_factory=list)
    wandb_id: Optional[str] = None

    @property
    def task(self) -> str:
        return self.summary.get("task") or _get(self.config, "task", "name") or "?"

    @property
    def norm(self) -> str:
        return self.summary.get("norm") or _get(self.config, "norm", "name") or "?"

    @property
    def partial(self) -> Optional[float]:
        # Only norms that take a partial (pRMSNorm) read norm.partial; the others keep the
        # config's unused default.
        if self.norm not in NORMS or not NORMS[self.norm].takes_partial:
            return None
        value = self.summary.get("partial", _get(self.config, "norm", "partial"))
        return None if value is None else float(value)

    @property
    def seed(self):
        return self.summary.get("seed", self.config.get("seed"))

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")

    @property
    def state(self) -> str:
        """"completed", "crashed" or "running". A run whose summary still says "running" was
        killed (kill -9, power cut) when it ran on this host and its process is gone; elsewhere
        it cannot be told from a live run and counts as running. Only completed runs are averaged."""
        status = self.status
        if status == "completed":
            return "completed"
        if status != "running":
            return "crashed"  # failed, interrupted, or W&B's crashed/killed/failed
        host, pid = (self.summary.get("environment") or {}).get("host"), self.summary.get("pid")
        if host == platform.node() and isinstance(pid, int) and not _process_alive(pid):
            return "crashed"
        return "running"

    @property
    def group_key(self) -> tuple:
        return (self.task, self.norm, self.partial)

    def series(self, key: str, split: Optional[str] = None) -> list[tuple[int, float]]:
        """(step, value) of `key` over the logged rows (of `split` if given), nulls left out."""
        return [(r["step"], r[key]) for r in self.rows
                if r.get(key) is not None and (split is None or r.get("split") == split)]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _get(config: dict, *keys):
    for key in keys:
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


# ----------------------------------------------------------------------------------- local
def find_run_dirs(root: Path) -> list[Path]:
    """Every directory under `root` (itself included) holding a run store's summary.json."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--runs {root}: no such directory")
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "wandb", ".hydra"))
        if "summary.json" in files:
            found.append(Path(here))
    if not found:
        raise FileNotFoundError(f"--runs {root}: no runs in it (no summary.json at any depth)")
    return found


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except ValueError as error:  # written atomically, so only a hand-edited or foreign file is torn
        raise StorageError(f"{run_dir / 'summary.json'} is not valid JSON ({error})") from None
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    rows = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    wandb_id = None
    if (run_dir / WANDB_RUN_FILE).exists():  # a cached W&B run
        wandb_id = json.loads((run_dir / WANDB_RUN_FILE).read_text())["id"]
    elif (run_dir / WANDB_ID_FILE).exists():
        wandb_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    return Run(run_dir, config or {}, summary, rows, wandb_id)


def collect_local(roots: Iterable[Path]) -> list[Run]:
    runs, seen = [], set()
    for root in roots:
        for run_dir in find_run_dirs(root):
            if run_dir.resolve() not in seen:
                seen.add(run_dir.resolve())
                runs.append(load_run(run_dir))
    return runs


def dedupe(runs: list[Run]) -> list[Run]:
    """One record per W&B run id: a local run directory and its W&B copy count once (the first
    found wins, so pass local trees before W&B)."""
    kept, ids = [], set()
    for run in runs:
        if run.wandb_id and run.wandb_id in ids:
            continue
        ids.add(run.wandb_id)
        kept.append(run)
    return kept


# ----------------------------------------------------------------------------------- W&B
def _split_of(key: str) -> Optional[str]:
    """The run-store split a W&B history key belongs to (W&B keeps one flat row per step)."""
    prefix = key.split("/", 1)[0]
    if prefix in ("val", "test"):
        return prefix
    if prefix in ("train", "time", "throughput", "drift") or key == "lr":
        return "train"
    return None  # W&B's own keys (_step, _runtime, _timestamp) and anything unknown


def history_to_rows(history: Iterable[dict]) -> list[dict]:
    """W&B history rows -> run-store metrics rows, one per (step, split) as the trainer logs them."""
    rows = []
    for entry in history:
        step = entry.get("_step")
        if step is None:
            continue
        by_split: dict[str, dict] = {}
        for key, value in entry.items():
            split = _split_of(key)
            if split is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                by_split.setdefault(split, {})[key] = value if math.isfinite(value) else None
        for split in SPLITS:
            if split in by_split:
                rows.append({"step": int(step), "split": split, **by_split[split]})
    return rows


def _plain(mapping) -> dict:
    """A W&B summary/config as a plain dict (the API's objects wrap it)."""
    raw = getattr(mapping, "_json_dict", None)
    data = dict(raw if raw is not None else mapping)
    return {k: v for k, v in data.items() if not k.startswith("_")}


def project_cache(cache: Path, project: str) -> Path:
    """Where the runs of ENTITY/PROJECT are cached: one run-store directory per run id."""
    return Path(cache) / re.sub(r"[^A-Za-z0-9._-]", "_", project)


def write_cached_run(directory: Path, *, meta: dict, config: dict, summary: dict, rows: list[dict]) -> None:
    """A fetched W&B run as a run-store directory (through RunStore itself, so the format is the
    one the trainer writes) plus wandb_run.json (`meta`: id, path, url, state, group, tags)."""
    store = RunStore(directory)
    try:
        store.write_config(config)
        for row in rows:
            store.log(row["step"], row["split"], {k: v for k, v in row.items() if k not in ("step", "split")})
        # W&B's state ("finished", "crashed", ...) stands in where the summary has no run-store status.
        status = summary.get("status") or {"finished": "completed"}.get(meta["state"], meta["state"])
        store.update_summary(**{**summary, "status": status})
    finally:
        store.close()
    write_json_atomic(directory / WANDB_RUN_FILE, meta)


def _selected(meta: dict, group: Optional[str], tags: Optional[list[str]]) -> bool:
    return (not group or meta.get("group") == group) and (not tags or bool(set(tags) & set(meta.get("tags") or [])))


def fetch_wandb(project: str, cache: Path, *, group: Optional[str] = None, tags: Optional[list[str]] = None,
                refresh: bool = False, offline: bool = False, api=None) -> list[Path]:
    """Fetch the runs of ENTITY/PROJECT (filtered by group, and by any of `tags`) into `cache`;
    return their cache directories. A finished run already cached is not fetched again unless
    `refresh`. `offline`, or a failing W&B API (no network, no key), answers from the cache alone."""
    where = project_cache(cache, project)
    if not offline:
        try:
            return _fetch(project, where, group, tags, refresh, api)
        except Exception as error:  # noqa: BLE001 - any API failure falls back to the cache
            if not where.is_dir():
                raise RuntimeError(f"--wandb {project}: W&B unreachable ({error}) and nothing cached in {where}") from None
            log.warning("--wandb %s: W&B unreachable (%s); using the cache in %s", project, error, where)
    if not where.is_dir():
        raise RuntimeError(f"--wandb {project}: nothing cached in {where} (run once with a network)")
    dirs = []
    for directory in sorted(p for p in where.iterdir() if (p / WANDB_RUN_FILE).exists()):
        if _selected(json.loads((directory / WANDB_RUN_FILE).read_text()), group, tags):
            dirs.append(directory)
    return dirs


def _fetch(project, where, group, tags, refresh, api) -> list[Path]:
    if api is None:
        import wandb

        api = wandb.Api(timeout=60)
    filters = {}
    if group:
        filters["group"] = group
    if tags:
        filters["tags"] = {"$in": list(tags)}
    dirs = []
    for run in api.runs(project, filters=filters or None):
        directory = where / run.id
        marker = directory / WANDB_RUN_FILE
        if not refresh and marker.exists() and json.loads(marker.read_text())["state"] == "finished":
            dirs.append(directory)
            continue
        log.info("fetching W&B run %s (%s)", run.id, run.name)
        meta = {"id": run.id, "path": "/".join(run.path) if isinstance(run.path, list) else str(run.path),
                "url": getattr(run, "url", None), "state": run.state, "name": run.name,
                "group": getattr(run, "group", None), "tags": list(getattr(run, "tags", None) or [])}
        write_cached_run(directory, meta=meta, config=_plain(run.config), summary=_plain(run.summary),
                         rows=history_to_rows(run.scan_history()))
        dirs.append(directory)
    return dirs


# ------------------------------------------------------------------------------ grouping
@dataclass
class Stat:
    values: list

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return mean_std(self.values)[0]

    @property
    def std(self) -> Optional[float]:
        """Sample standard deviation over seeds; None with fewer than two."""
        return mean_std(self.values)[1]


def group_runs(runs: Iterable[Run]) -> dict[tuple, list[Run]]:
    """(task, norm, partial) -> that group's runs, in a stable order."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group_key, []).append(run)
    return {key: sorted(group, key=lambda r: (str(r.seed), str(r.path))) for key, group in sorted(
        groups.items(), key=lambda item: tuple("" if v is None else str(v) for v in item[0]))}
