"""Where controlled step timings are read back: the `steps.json` that `repro-bench steps` writes
(repro.bench.steps documents the format). The tables take their speed columns from these
paired, interleaved measurements when a runs tree holds one for the task, and from training
runs only when those recorded an uncontended host.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

KIND = "repro-bench steps"
RESULT_FILE = "steps.json"


def load_step_timings(path, task: Optional[str] = None) -> dict[str, dict]:
    """Per-norm step timings of one task from a steps.json, or from the newest steps.json of
    `task` anywhere under a directory: {norm: {"ratio_vs_layernorm", "ratio_ci95", "median_step_ms",
    "norm_fwd_ms", "norm_bwd_ms", "norm_ratio_vs_layernorm", "norm_ratio_ci95", "parameters",
    "host": the measurement's host record, "created", "rounds"}}. {} when there is none; ValueError when a directory holds
    several tasks' timings and `task` does not say which."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob(RESULT_FILE)) if path.is_dir() else []
    docs = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if doc.get("kind") == KIND and (task is None or doc.get("task") == task):
            docs.append(doc)
    if not docs:
        return {}
    tasks = sorted({d["task"] for d in docs})
    if len(tasks) > 1:
        raise ValueError(f"{path} holds step timings of several tasks ({', '.join(tasks)}); pass task=")
    newest = max(docs, key=lambda d: d.get("created", ""))
    measurement = {"host": newest.get("host"), "created": newest.get("created"), "rounds": newest.get("rounds")}
    return {norm: {**entry, **measurement} for norm, entry in newest["norms"].items()}
