"""scripts/reproduce.sh mini --cpu-smoke end to end: sweeps on generated data, tables, figures and
analyses (a couple of minutes on a CPU, hence slow)."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from repro.tables import collect_local

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_smoke_reproduces_every_table_figure_and_analysis(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", "scripts/reproduce.sh", "mini", "--cpu-smoke", "--seeds", "1", "--runs", str(runs),
                    "--out", str(out)], cwd=ROOT, env=env, check=True, timeout=900)
    runs_found = collect_local([runs / "cifar10", runs / "multi30k"])
    assert sorted((r.task, r.norm, r.status) for r in runs_found) == sorted(
        (task, norm, "completed") for task in ("cifar10_cnn", "multi30k_transformer")
        for norm in ("layernorm", "rmsnorm", "prmsnorm"))
    table4 = (out / "tables" / "table4_transformer.md").read_text()
    assert "| LayerNorm | 1 |" in table4 and "test_2016_flickr sacreBLEU" in table4
    table10 = (out / "tables" / "table10_cifar10.md").read_text()
    # one run per norm: the shift-training runs (Multi30k too) are not counted in Table 4
    assert "| pRMSNorm (p=6.25%) | 1 |" in table10 and "| LayerNorm | 1 |" in table10
    assert len(collect_local([runs / "shift_training"])) == 4
    for name in ("loss_curves", "val_curves", "norm_share"):
        assert (out / "figures" / f"{name}.png").is_file()
    for name in ("invariance", "control_bits", "control_bits_training", "partial_error", "shift_training"):
        assert (out / "analysis" / f"{name}.md").is_file() and (out / "analysis" / f"{name}.png").is_file()


def test_bad_arguments_are_one_line_errors():
    for args, message in ((["weekly"], "mode must be mini or full, got 'weekly'"),
                          (["mini", "--fast"], "unknown option '--fast'"),
                          (["full", "--cpu-smoke"], "--cpu-smoke goes with mini"),
                          (["mini", "--seeds", "a,b"], "--seeds must be a comma list of ints")):
        result = subprocess.run(["bash", "scripts/reproduce.sh", *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr


def test_full_mode_launches_the_papers_table4_schedule():
    """What `reproduce.sh full` launches for Table 4, composed job by job as repro-train would:
    ~25K tokens per optimizer step, 300K steps, and none / LayerNorm / RMSNorm / pRMSNorm p = 6.25 %."""
    from hydra import compose, initialize_config_dir

    from repro.cli.train import CONF_DIR, sweep_jobs

    result = subprocess.run(["bash", "scripts/reproduce.sh", "full", "--dry-run"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    commands = [shlex.split(line) for line in result.stdout.splitlines() if line.startswith("repro-train")]
    wmt = [c for c in commands if any("wmt14" in a for a in c)]
    assert len(wmt) == 1 and wmt[0][:2] == ["repro-train", "-m"]
    jobs = sweep_jobs(wmt[0][2:], CONF_DIR)
    norms = set()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for job in jobs:
            cfg = compose("config", job)
            assert cfg.task.name == "wmt14_transformer" and cfg.model.dim == 512 and cfg.model.encoder_layers == 6
            assert cfg.trainer.max_steps == 300_000
            tokens_per_step = cfg.data.max_tokens * cfg.trainer.accumulate
            assert 24_000 <= tokens_per_step <= 26_000, tokens_per_step
            norms.add((cfg.norm.name, cfg.norm.partial if cfg.norm.name == "prmsnorm" else None))
    assert norms == {("none", None), ("layernorm", None), ("rmsnorm", None), ("prmsnorm", 0.0625)}
    assert len(jobs) == 4 * 3  # every norm, seeds 1-3
