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


def wall_time_at(checkpoint: Path) -> float:
    return ckpt.load(checkpoint)["wall_time_s"]


def assert_same_as_uninterrupted(run_dir: Path, uninterrupted: Path, resumed_step: int, wall_before: float) -> None:
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
    # The wall time counts the time before the resume too: more than the resumed checkpoint had taken.
    assert summary["wall_time_s"] > wall_before > 0
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
    wall_before = wall_time_at(tmp_path / "checkpoints" / "last.pt")
    train(smoke_config(cifar_jpeg, *OVERRIDES), tmp_path)  # trainer.resume=auto
    assert_same_as_uninterrupted(tmp_path, uninterrupted, resumed_step, wall_before)


@pytest.mark.slow
@pytest.mark.parametrize("n", range(1, 9))
def test_kill_9_in_every_step_then_rerun_ends_as_the_uninterrupted_run(n, cifar_jpeg, uninterrupted, tmp_path):  # noqa: F811
    kill_at("step", n, cifar_jpeg, tmp_path)
    resumed_step = (n - 1) // 2 * 2  # the newest checkpoint before step n
    wall_before = wall_time_at(tmp_path / "checkpoints" / "last.pt") if resumed_step else 0.0
    train(smoke_config(cifar_jpeg, *OVERRIDES), tmp_path)
    if resumed_step == 0:  # nothing to resume: a fresh start in the same directory
        assert without_timing(read_metrics(tmp_path)) == without_timing(read_metrics(uninterrupted))
        assert summary_of(tmp_path)["resumed_step"] is None
    else:
        assert_same_as_uninterrupted(tmp_path, uninterrupted, resumed_step, wall_before)


@pytest.mark.slow
def test_killed_twice_then_rerun_ends_as_the_uninterrupted_run(cifar_jpeg, uninterrupted, tmp_path):  # noqa: F811
    kill_at("step", 3, cifar_jpeg, tmp_path)
    kill_at("metrics", 5, cifar_jpeg, tmp_path)  # the resumed process, half-way through step 5's line
    train(smoke_config(cifar_jpeg, *OVERRIDES), tmp_path)
    assert [s["step"] for s in summary_of(tmp_path)["starts"]] == [0, 2, 4]
    summary = summary_of(tmp_path)
    assert summary["totals/steps"] == 8 and without_timing(read_metrics(tmp_path)) == without_timing(
        read_metrics(uninterrupted))


# ------------------------------------------------------------------------------ damaged files
SHORT = ("norm.backend=torch", "trainer.max_steps=2", "trainer.eval_every=2", "trainer.log_every=1")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_last_pt_is_one_line_naming_it(damage, cifar_jpeg, tmp_path):  # noqa: F811
    train(smoke_config(cifar_jpeg, *SHORT), tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 100)
    with pytest.raises(StorageError) as info:
        train(smoke_config(cifar_jpeg, *SHORT), tmp_path)
    message = str(info.value)
    assert "\n" not in message and f"{last} is damaged" in message
    assert "Move it away" in message and "trainer.resume=none" in message
    assert len(read_metrics(tmp_path)) == 4  # the failed resume touched nothing
    # Told to start fresh, it does.
    train(smoke_config(cifar_jpeg, *SHORT, "trainer.resume=none"), tmp_path)
    assert ckpt.load(last)["step"] == 2


def test_a_damaged_last_pt_on_the_command_line_is_one_line_not_a_traceback(cifar_jpeg, tmp_path):  # noqa: F811
    args = [sys.executable, "-m", "repro.cli.train", "experiment=smoke", f"data.root={cifar_jpeg}", *SHORT,
            f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(args, capture_output=True, timeout=300, env=env).returncode == 0
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot resume: {last} is damaged")


def test_a_damaged_last_pt_falls_back_to_the_newest_intact_step_checkpoint(uninterrupted, cifar_jpeg, tmp_path,  # noqa: F811
                                                                           caplog):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    checkpoints = run_dir / "checkpoints"
    # step_8 is a hard link of last.pt: damage in place reaches both, so step_6 is the newest intact one.
    for name in ("last.pt", "step_00000008.pt"):
        (checkpoints / name).write_bytes(b"garbage")
    wall_before = wall_time_at(checkpoints / "step_00000006.pt")
    with caplog.at_level("WARNING"):
        train(smoke_config(cifar_jpeg, *OVERRIDES), run_dir)
    assert any("last.pt is damaged" in r.message and "step_00000006.pt (step 6)" in r.message for r in caplog.records)
    assert summary_of(run_dir)["resumed_from"].endswith("step_00000006.pt")
    assert_same_as_uninterrupted(run_dir, uninterrupted, 6, wall_before)


@pytest.mark.parametrize("overrides, message", [
    (("norm=layernorm",), r"norm\.name=rmsnorm, this run has norm\.name=layernorm"),
    (("model.width=16",), r"does not fit this model: \S+ has shape \(8, .*\) there, \(16, .*\) here"),
    (("task=cifar10_vit", "~model.width", "model.dim=24", "model.depth=2", "model.heads=3"),
     r"task\.name=cifar10_cnn, this run has task\.name=cifar10_vit"),
])
def test_a_checkpoint_of_another_run_is_one_line_naming_the_mismatch(overrides, message, uninterrupted, cifar_jpeg,  # noqa: F811
                                                                     tmp_path):
    cfg = smoke_config(cifar_jpeg, *OVERRIDES, *overrides, f"trainer.resume={uninterrupted}")
    with pytest.raises(ConfigError, match=message) as info:
        train(cfg, tmp_path)
    assert "\n" not in str(info.value) and str(uninterrupted / "checkpoints" / "last.pt") in str(info.value)


def test_a_torn_last_metrics_line_is_skipped_with_a_warning_and_a_bad_middle_line_named(tmp_path):
    from repro.tables import collect_local

    store = RunStore(tmp_path)
    store.log(1, "train", {"train/loss": 1.0})
    store.log(2, "train", {"train/loss": 0.5})
    store.update_summary(status="running", task="cifar10_cnn", norm="rmsnorm")
    store.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "split": "train", "train/lo')
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: skipped the torn last line 3"):
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["step"] for r in collect_local([tmp_path])[0].rows] == [1, 2]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(StorageError, match=r"metrics\.jsonl line 2 is not a metrics row"):
        read_metrics(tmp_path)


# --------------------------------------------------------------------------------- full disk
def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullFromStep:
    """A metrics file whose writes fail with ENOSPC from the first line of step `step` on (a disk
    filling up)."""

    def __init__(self, f, step: int):
        self.f, self.step, self.full = f, step, False

    def write(self, text):
        self.full = self.full or json.loads(text)["step"] >= self.step
        return enospc() if self.full else self.f.write(text)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("where", ["checkpoint", "summary", "metrics"])
def test_a_full_disk_stops_the_run_clearly_keeps_its_files_and_a_rerun_resumes(where, uninterrupted, cifar_jpeg,  # noqa: F811
                                                                              tmp_path, monkeypatch):
    import repro.track.run_store as run_store_module

    if where == "checkpoint":  # the disk fills before step 6's last.pt (the first checkpoint without an evaluation)
        real_save = torch.save

        def save(state, *args, **kwargs):
            return enospc() if state["step"] >= 6 else real_save(state, *args, **kwargs)
        monkeypatch.setattr(ckpt.torch, "save", save)
        failed_file, resumed_step = "last.pt", 4
    elif where == "summary":  # ... before the summary of step 8's evaluation
        real_write = run_store_module.write_json_atomic

        def write(path, data):
            return enospc() if (data.get("step") or 0) >= 8 else real_write(path, data)
        monkeypatch.setattr(run_store_module, "write_json_atomic", write)
        failed_file, resumed_step = "summary.json", 6
    else:  # ... before step 5's metrics line
        real_init = RunStore.__init__

        def init(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            self._metrics = FullFromStep(self._metrics, 5)
        monkeypatch.setattr(RunStore, "__init__", init)
        failed_file, resumed_step = "metrics.jsonl", 4
    with pytest.raises(StorageError) as info:
        train(smoke_config(cifar_jpeg, *OVERRIDES), tmp_path)
    message = str(info.value)
    assert "\n" not in message and failed_file in message and "No space left on device" in message
    assert "rerun the same run directory to resume" in message
    # Everything written before stays readable.
    assert ckpt.load(tmp_path / "checkpoints" / "last.pt")["step"] == resumed_step
    wall_before = wall_time_at(tmp_path / "checkpoints" / "last.pt")
    summary = summary_of(tmp_path)
    assert summary["status"] in ("failed", "running")
    assert read_metrics(tmp_path)
    monkeypatch.undo()  # space freed
    train(smoke_config(cifar_jpeg, *OVERRIDES), tmp_path)
    assert_same_as_uninterrupted(tmp_path, uninterrupted, resumed_step, wall_before)


# -------------------------------------------------------------------------- tables, translation
def run_tables_cli(*args: str):
    from repro.cli.tables import run_tables

    return run_tables(list(args))


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_tables_on_a_missing_or_empty_folder_is_an_error(folder, tmp_path, capsys):
    runs = tmp_path / "runs"
    if folder == "empty":
        (runs / "sub").mkdir(parents=True)
    with pytest.raises(SystemExit) as info:
        run_tables_cli("--runs", str(runs), "--out", str(tmp_path / "out"))
    assert info.value.code == 2
    assert (f"--runs {runs}: no such directory" if folder == "missing" else f"--runs {runs}: no runs in it") \
        in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tables_list_crashed_and_running_runs_apart_and_never_average_them(uninterrupted, tmp_path, capsys):
    import platform
    import shutil

    runs = tmp_path / "runs"
    for name in ("completed", "failed", "killed", "running"):
        shutil.copytree(uninterrupted, runs / name, ignore=shutil.ignore_patterns("checkpoints"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    changes = {"failed": {"status": "failed", "error": "RuntimeError: boom", "test/acc": 0.0},
               # kill -9 leaves "running"; its process is gone
               "killed": {"status": "running", "pid": gone.pid, "test/acc": 0.0},
               "running": {"status": "running", "pid": os.getpid(), "test/acc": 0.0}}
    for name, change in changes.items():
        summary = summary_of(runs / name)
        summary.update(change)
        summary["environment"]["host"] = platform.node()
        (runs / name / "summary.json").write_text(json.dumps(summary))
    assert run_tables_cli("--runs", str(runs), "--out", str(tmp_path / "out")) == 0
    assert "4 runs collected: 1 completed, 2 crashed, 1 running; only completed runs are averaged" in \
        capsys.readouterr().out
    md = (tmp_path / "out" / "tables" / "table10_cifar10.md").read_text()
    assert f"excluded, crashed: {runs / 'failed'}" in md and f"excluded, crashed: {runs / 'killed'}" in md
    assert f"excluded, still running: {runs / 'running'}" in md
    error = 100 * (1 - summary_of(uninterrupted)["test/acc"])
    assert f"| RMSNorm | 1 | 8 | {error:.2f} |" in md  # n = 1: only the completed run


def test_tables_from_wandb_offline_without_a_cache_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_tables_cli("--wandb", "someone/project", "--offline", "--cache", str(tmp_path / "cache"))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--wandb someone/project: nothing cached in" in err and "run once with a network" in err


@pytest.mark.parametrize("source, reference, message", [
    (b"", None, r"src\.en is empty"),
    (b"one\ntwo\n", b"eins\n", r"src\.en has 2 lines but .*ref\.de has 1"),
    (b"caf\xe9 au lait\n", None, r"cannot read .*src\.en: 'utf-8' codec can't decode byte 0xe9"),
    (b"ok\n", b"\xff\xfe\n", r"cannot read .*ref\.de: 'utf-8' codec can't decode byte 0xff"),
])
def test_translate_bad_input_is_one_line(source, reference, message, tmp_path):
    from repro.cli.translate import main as translate_main

    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"never read: the inputs are checked first")
    (tmp_path / "src.en").write_bytes(source)
    args = ["--checkpoint", str(checkpoint), "--src", str(tmp_path / "src.en")]
    if reference is not None:
        (tmp_path / "ref.de").write_bytes(reference)
        args += ["--ref", str(tmp_path / "ref.de")]
    with pytest.raises(SystemExit, match=message) as info:
        translate_main(args)
    assert "\n" not in str(info.value.code)


def test_translate_with_a_damaged_checkpoint_is_one_line(tmp_path):
    from repro.cli.translate import main as translate_main

    (tmp_path / "best.pt").write_bytes(b"PK\x03\x04 truncated zip")
    (tmp_path / "src.en").write_text("a sentence\n")
    with pytest.raises(SystemExit, match=r"error: .*best\.pt is damaged \(") as info:
        translate_main(["--checkpoint", str(tmp_path / "best.pt"), "--src", str(tmp_path / "src.en")])
    assert "\n" not in str(info.value.code)
