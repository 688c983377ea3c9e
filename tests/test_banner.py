"""The start banner and the time estimate that whoever starts the main job sees first."""
from __future__ import annotations

import logging

from repro.train.banner import QUICK_CPU_RUN, ProgressLog, RunPlan, StepClock, start_banner, time_estimate
from train_helpers import cifar_jpeg, one_thread, smoke_config  # noqa: F401


def test_banner_shows_what_runs_and_where():
    text = start_banner(RunPlan(task="cifar10_cnn", parameters=1_370_000, norm="rmsnorm", device="cpu (x)",
                                threads=2, total_steps=90_000, steps_per_epoch=450, run_dir="/runs/a",
                                wandb="offline"))
    for expected in ("cifar10_cnn", "1,370,000 parameters", "rmsnorm", "cpu (x), 2 CPU threads",
                     "90,000 (200 epochs of 450 steps)", "/runs/a", "offline"):
        assert expected in text, expected
    assert len(text.splitlines()) <= 12


def test_a_long_cpu_run_gets_its_duration_and_the_quick_run():
    line = time_estimate(1.75, 90_000, "cpu")  # the README's first command on a 2-core host
    assert "43.8 h" in line and QUICK_CPU_RUN in line
    assert QUICK_CPU_RUN not in time_estimate(1.75, 90_000, "cuda")
    assert QUICK_CPU_RUN not in time_estimate(0.05, 600, "cpu")  # 30 s: nothing to warn about


def test_the_estimate_comes_once_after_the_first_steps():
    clock = StepClock(total_steps=100, start_step=0, device_type="cpu")
    lines = [clock.tick(step, now=float(step)) for step in range(1, 100)]  # 1 s per step
    said = [(step, line) for step, line in zip(range(1, 100), lines) if line]
    assert len(said) == 1 and said[0][0] == 21 and "79 s for the remaining 79 steps at 1 s/step" in said[0][1]


def test_a_run_logs_the_banner_and_an_estimate(cifar_jpeg, tmp_path, caplog):  # noqa: F811
    from repro.train import train

    with caplog.at_level(logging.INFO, logger="repro.train.trainer"):
        train(smoke_config(cifar_jpeg, "trainer.max_steps=3"), tmp_path)
    text = caplog.text
    assert "cifar10_cnn" in text and "parameters" in text and str(tmp_path) in text and "W&B         off" in text
    assert "estimate:" in text


def test_progress_lines_come_at_each_tenth_with_the_time_left():
    log = ProgressLog(total_steps=100, steps_per_epoch=25)
    lines = {step: log.tick(step, now=2.0 * step, loss=1.5) for step in range(1, 101)}  # 2 s per step
    said = {step: line for step, line in lines.items() if line}
    assert sorted(said) == list(range(10, 101, 10))
    assert said[30] == "step 30/100 (30 %), epoch 2/4, train loss 1.5, 2 s/step, 2 min left"
    assert said[100].startswith("step 100/100 (100 %), epoch 4/4") and "left" not in said[100]


def test_progress_lines_of_a_resumed_run_time_only_its_own_steps():
    log = ProgressLog(total_steps=1000, steps_per_epoch=100)
    assert log.tick(641, now=500.0, loss=None) is None  # the first step: one-off costs, not timed
    line = log.tick(700, now=500.0 + 59 * 0.5, loss=None)
    assert line == "step 700/1,000 (70 %), epoch 7/10, 0.5 s/step, 2 min left"


def test_a_run_without_its_progress_bar_logs_progress_lines(cifar_jpeg, tmp_path, caplog):  # noqa: F811
    from repro.train import train

    with caplog.at_level(logging.INFO, logger="repro.train.trainer"):
        train(smoke_config(cifar_jpeg, "trainer.max_steps=4", "trainer.progress_bar=false",
                           "trainer.log_every=2"), tmp_path)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert progress and progress[-1].startswith("step 4/4 (100 %), epoch ") and "train loss " in progress[-1]
