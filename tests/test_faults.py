"""Faults and bad input: every one gets a clear answer and loses nothing (docs/FAULTS.md tabulates
them). Crashes are real `kill -9`s of a training subprocess at deterministic points
(tests/fault_driver.py); the rerun of the same run directory must end exactly as an
uninterrupted run (deterministic mode, timing columns aside), with a clean metrics.jsonl and a
summary that says where it resumed and whose totals cover the whole run."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from repro.track import RunStore, read_metrics
from repro.train import checkpoint as ckpt
from repro.train import train
from repro.util import ConfigError, StorageError
from train_helpers import cifar_jpeg, one_thread, smoke_config  # noqa: F401

TESTS = Path(__file__).resolve().parent
# 8 steps, a checkpoint every 2 (the newest two kept as step_*.pt), evaluations at 4 and 8. The
# torch norm backend: these are trainer faults, and a fresh process then compiles no C++ kernels.
OVERRIDES = ("norm.backend=torch", "trainer.max_steps=8", "trainer.log_every=1", "trainer.eval_every=4", "trainer.checkpoint_every=2",
             "trainer.keep_checkpoints=2", "trainer.norm_timing_every=3", "optim.schedule.name=paper",
             "trainer.grad_clip=1.0")
TIMING = ("time/", "throughput/", "totals/train_s")


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in rows]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def params_of(run_dir: Path) -> dict:
    return ckpt.load(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def uninterrupted(cifar_jpeg, tmp_path_factory) -> Path:  # noqa: F811
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(smoke_config(cifar_jpeg, *OVERRIDES), run_dir)
    finally:
        torch.set_num_threads(threads)
    return run_dir


def kill_at(point: str, n: int, data_root: Path, run_dir: Path, *overrides: str) -> None:
    """Run the driver until it SIGKILLs itself at `point` #n."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    result = subprocess.run([sys.executable, str(TESTS / "fault_driver.py"), point, str(n), str(data_root),
                             str(run_dir), *OVERRIDES, *overrides], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


def assert_same_as_uninterrupted(run_dir: Path, uninterrupted: Path, resumed_step: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torn line left to skip
        rows = read_metrics(run_dir)
    keys = [(r["step"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate metrics rows"
    assert without_timing(rows) == without_timing(read_metrics(uninterrupted))
    resumed, full = params_of(run_dir), params_of(uninterrupted)
    assert all(torch.equal(resumed[k], full[k]) for k in full)
    summary, reference = summary_of(run_dir), summary_of(uninterrupted)
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["resumed_step"] == resumed_step and summary["resumed_from"].endswith(".pt")
    assert [s["step"] for s in summary["starts"]] == [0, resumed_step]
    # The totals cover all 8 steps, not only those after the resume.
    for key in ("totals/steps", "totals/items", "totals/norm_samples", "test/acc", "val/acc", "best/val/acc"):
        assert summary[key] == reference[key], key
    assert summary["totals/steps"] == 8
    assert summary["wall_time_s"] > ckpt.load(run_dir / "checkpoints" / f"step_{resumed_step:08d}.pt")["wall_time_s"] \
        if (run_dir / "checkpoints" / f"step_{resumed_step:08d}.pt").exists() else summary["wall_time_s"] > 0
    assert not list(run_dir.rglob(".*.tmp")), "a temporary file was left behind"


# point, n, the step of the checkpoint the rerun resumes from
KILLS = {
    "mid-step": ("step", 7, 6),                # inside step 7's training step
    "mid-evaluation": ("eval", 3, 6),          # the final evaluation (step 8), first split
    "mid-checkpoint-write": ("checkpoint", 3, 4),  # step 6's last.pt written to its temporary file, not renamed
    "mid-metrics-line": ("metrics", 9, 6),     # step 7's train line half written
}


@pytest.mark.parametrize("fault", list(KILLS))
def test_kill_9_then_rerun_ends_as_the_uninterrupted_run(fault, cifar_jpeg, uninterrupted, tmp_path):  # noqa: F811
    point, n, resumed_step = KILLS[fault]
    kill_at(point, n, cifar_jpeg, tmp_path)
    # What the kill leaves is readable: last.pt at the resume step, summary.json still "running".
    assert ckpt.load(tmp_path / "checkpoints" / "last.pt")["step"] == resumed_step
    assert summary_of(tmp_path)["status"] == "running"
    if point == "metrics":
        with pytest.warns(UserWarning, match="torn last line"):
            read_metrics(tmp_path)
    if point == "checkpoint":
        assert list((tmp_path / "checkpoints").glob(".last.pt.*.tmp"))
    train(smoke_config(cifar_jpeg, *OVERRIDES), tmp_path)  # trainer.resume=auto
    assert_same_as_uninterrupted(tmp_path, uninterrupted, resumed_step)


@pytest.mark.slow
@pytest.mark.parametrize("n", range(1, 9))
def test_kill_9_in_every_step_then_rerun_ends_as_the_uninterrupted_run(n, cifar_jpeg, uninterrupted, tmp_path):  # noqa: F811
    kill_at("step", n, cifar_jpeg, tmp_path)
    resumed_step = (n - 1) // 2 * 2  # the newest checkpoint before step n
    train(smoke_config(cifar_jpeg, *OVERRIDES), tmp_path)
    if resumed_step == 0:  # nothing to resume: a fresh start in the same directory
        assert without_timing(read_metrics(tmp_path)) == without_timing(read_metrics(uninterrupted))
        assert summary_of(tmp_path)["resumed_step"] is None
    else:
        assert_same_as_uninterrupted(tmp_path, uninterrupted, resumed_step)


@pytest.mark.slow
def test_killed_twice_then_rerun_ends_as_the_uninterrupted_run(cifar_jpeg, uninterrupted, tmp_path):  # noqa: F811
    kill_at("step", 3, cifar_jpeg, tmp_path)
    kill_at("metrics", 5, cifar_jpeg, tmp_path)  # the resumed process, half-way through step 5's line
    train(smoke_config(cifar_jpeg, *OVERRIDES), tmp_path)
    assert [s["step"] for s in summary_of(tmp_path)["starts"]] == [0, 2, 4]
    summary = summary_of(tmp_path)
    assert summary["totals/steps"] == 8 and without_timing(read_metrics(tmp_path)) == without_timing(
        read_metrics(uninterrupted))
