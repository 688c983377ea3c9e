"""scripts/cpu_budget_runs.sh, the queue of issue 14's CPU-budget jobs: every repro-train command it
prints composes job by job as repro-train would run it (no data read), in the order and budgets
the committed tables say; the queue runs its jobs in order with a progress line each, and stops at
a failing one (checked with stand-in commands on PATH)."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from repro.cli.train import sweep_jobs
from repro.train import compose_config
from repro.util.paths import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ["bash", "scripts/cpu_budget_runs.sh"]


def dry_run(*args: str, **env: str) -> list[list[str]]:
    result = subprocess.run([*SCRIPT, "--dry-run", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "DATA": "../shared/data", "DEEP_SEEDS": "1", **env})
    return [shlex.split(line) for line in result.stdout.splitlines()]


def composed(command: list[str]) -> list:
    assert command[:2] == ["repro-train", "-m"]
    return [compose_config(job, conf_dir=CONF_DIR) for job in sweep_jobs(command[2:], CONF_DIR)]


def option(command: list[str], key: str) -> str:
    return next(word.split("=", 1)[1] for word in command if word.startswith(f"{key}="))


def test_every_printed_sweep_composes_with_the_committed_budgets():
    commands = dry_run(DATA="/data")
    assert [c[0] for c in commands] == ["repro-train"] * 6 + ["repro-tables"] * 2
    table10 = [cfg for command in commands[:3] for cfg in composed(command)]
    table4, deep, deep_low_lr = (composed(c) for c in commands[3:6])

    # one sweep per seed: every norm gets seed 1 before any gets seed 2
    assert [(c.seed, c.norm.name) for c in table10] == [
        (s, n) for s in (1, 2, 3) for n in ("none", "batchnorm", "weightnorm", "layernorm", "rmsnorm", "prmsnorm")]
    assert {(c.experiment_name, c.model.width, c.trainer.max_epochs, c.trainer.precision, c.data.root)
            for c in table10} == {("cifar10_table10_cpu", 32, 20, "bf16", "/data/cifar10-jpg")}

    # seed-major: every norm gets seed 1 before any gets seed 2
    assert [(c.seed, c.norm.name) for c in table4] == [
        (s, n) for s in (1, 2, 3) for n in ("none", "layernorm", "rmsnorm", "prmsnorm")]
    for cfg in table4:
        assert (cfg.task.name, cfg.model.dim, cfg.model.encoder_layers, cfg.model.decoder_layers) == (
            "multi30k_transformer", 128, 3, 3)
        assert (cfg.trainer.max_steps, cfg.data.max_tokens, cfg.data.root) == (1800, 2048, "/data/multi30k")
        assert cfg.trainer.checkpoint_every <= 200 and cfg.logger.name == "none"
    assert next(c for c in table4 if c.norm.name == "prmsnorm").norm.partial == 0.0625

    # the table's lr and a quarter of it (the 6+6 post-norm control stalls at the table's lr), each
    # at 6+6 layers and at Table 4's 3+3, the shallow control on the same budget and lr
    lr = table4[0].optim.lr
    assert [(c.seed, c.model.encoder_layers, c.optim.lr, c.norm.name) for c in deep] == [
        (1, depth, rate, n) for n in ("none", "layernorm") for depth in (6, 3) for rate in (lr, lr / 4)
    ]  # params keep the base file's order
    assert {c.model.encoder_layers for c in deep} == {6, table4[0].model.encoder_layers}
    for cfg in deep:  # the 3+3 model's width, data and warm-up, on a shorter budget
        assert cfg.model.decoder_layers == cfg.model.encoder_layers and cfg.model.dim == table4[0].model.dim == 128
        assert cfg.trainer.max_steps < 1800 and cfg.optim.schedule.warmup_steps == table4[0].optim.schedule.warmup_steps
        assert cfg.experiment_name == "multi30k_nonorm_deep"
    # then seed 2 of every cell at the lower lr, where the 6+6 control trains and the call is made
    assert [(c.seed, c.model.encoder_layers, c.optim.lr, c.norm.name) for c in deep_low_lr] == [
        (2, depth, lr / 4, n) for n in ("none", "layernorm") for depth in (6, 3)]

    # the tables are rebuilt from exactly the three sweeps' folders, with a note per table
    tables = commands[-1]
    runs = [tables[i + 1] for i, word in enumerate(tables) if word == "--runs"]
    assert runs == list(dict.fromkeys(option(c, "hydra.sweep.dir") for c in commands[:6]))
    notes = [tables[i + 1] for i, word in enumerate(tables) if word == "--note"]
    assert [n.split("=", 1)[0] for n in notes] == ["table10", "table4"]
    assert "--out" in tables and commands[6][:3] == ["repro-tables", "analyze", "shift-training"]


def test_every_run_of_the_queue_has_its_own_folder_named_by_task_norm_and_seed():
    """Folders named by the run, not by its place in a sweep: a sweep run in parts (one seed at a
    time, or after a change of its norm list) finds its runs again. The depth sweep's also carry
    the depth and the lr, the things its runs differ in besides norm and seed."""
    from repro.train import compose_config as compose

    for command in dry_run()[:6]:
        folders = []
        for job in sweep_jobs(command[2:], CONF_DIR):
            cfg = compose(job, return_hydra_config=True, conf_dir=CONF_DIR)
            folders.append(cfg.hydra.sweep.subdir)
            model = cfg.model
            depth_lr = (f"_{model.encoder_layers}+{model.decoder_layers}_lr{cfg.optim.lr}"
                        if cfg.experiment_name == "multi30k_nonorm_deep" else "")
            assert cfg.hydra.sweep.subdir == f"{cfg.task.name}_{cfg.norm.name}{depth_lr}_seed{cfg.seed}"
        assert len(set(folders)) == len(folders)


def test_only_and_deep_seeds_select_and_bad_arguments_are_one_line_errors():
    assert [c[0] for c in dry_run("--only", "tables,deep")] == ["repro-train", "repro-train", "repro-tables"]
    deep = dry_run("--only", "deep", DEEP_SEEDS="1,2,3", DEEP_LOW_LR_SEEDS="")
    assert len(deep) == 1  # no extra seeds at the lower lr
    assert [(c.seed, c.model.encoder_layers, c.optim.lr, c.norm.name) for c in composed(deep[0])] == [
        (s, depth, lr, n) for s in (1, 2, 3) for n in ("none", "layernorm") for depth in (6, 3) for lr in (0.002, 0.0005)]
    (_, more) = dry_run("--only", "deep", DEEP_LOW_LR_SEEDS="2,3")
    assert {(c.seed, c.optim.lr) for c in composed(more)} == {(2, 0.0005), (3, 0.0005)}
    for args, message in ((["--only", "table5"], "--only table5 is not a job"),
                          (["--fast"], "unknown option '--fast'")):
        result = subprocess.run([*SCRIPT, *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1
    bad = subprocess.run([*SCRIPT, "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "DEEP_LOW_LR_SEEDS": "two"})
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "DEEP_LOW_LR_SEEDS must be" in bad.stderr


def stand_ins(bin_dir: Path, log: Path, native_bf16: str = "native") -> dict:
    """PATH with stand-ins for the queue's tools: repro-train and repro-tables record their call
    and fail when FAIL_ON matches it; python answers the bf16 check with `native_bf16`."""
    bin_dir.mkdir()
    for tool in ("repro-train", "repro-tables"):
        (bin_dir / tool).write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> {log}\n'
                                    f'[[ "$*" == *"${{FAIL_ON:-never}}"* ]] && exit 3\nexit 0\n')
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\necho {native_bf16}\n')
    (bin_dir / "python").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DEEP_SEEDS": "1"}


def test_the_queue_runs_in_order_with_progress_and_stops_at_a_failure(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    env = stand_ins(bin_dir, log)
    result = subprocess.run(SCRIPT, cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert [c.split()[2] if c.startswith("repro-train") else c.split()[1] for c in calls] == [
        *["experiment=cifar10_table10_cpu"] * 3, "experiment=multi30k_table4_cpu",
        *["experiment=multi30k_nonorm_deep"] * 2, "analyze", "--runs"]
    progress = [line for line in result.stdout.splitlines() if line.startswith("== [")]
    assert len(progress) == 10 and progress[0].startswith("== [1/5] table10: started")
    assert progress[-1].startswith("== [5/5] tables: done in 0h00m")

    log.unlink()
    failing = subprocess.run(SCRIPT, cwd=ROOT, capture_output=True, text=True,
                             env={**env, "FAIL_ON": "multi30k_table4_cpu"})
    assert failing.returncode == 3 and len(log.read_text().splitlines()) == 4  # nothing after the failure
    assert "== [2/5] table4: FAILED (exit 3)" in failing.stderr


def test_the_table10_job_says_in_one_line_where_bf16_is_emulated(tmp_path):
    """Its budget assumes oneDNN bf16; where the runs emulate it (about twice the time) one line says
    so before they start, and the runs go on. A CPU with bf16, or an unknown answer, says nothing."""
    log = tmp_path / "calls"
    env = stand_ins(tmp_path / "bin", log, native_bf16="emulated")
    emulated = subprocess.run([*SCRIPT, "--only", "table10"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert emulated.returncode == 0 and log.read_text().count("experiment=cifar10_table10_cpu") == 3
    assert "emulate bf16 autocast in fp32" in emulated.stderr and emulated.stderr.count("\n") == 1
    for answer in ("native", "None"):
        (tmp_path / "bin" / "python").write_text(f"#!/usr/bin/env bash\necho {answer}\n")
        quiet = subprocess.run([*SCRIPT, "--only", "table10"], cwd=ROOT, capture_output=True, text=True, env=env)
        assert quiet.returncode == 0 and "emulate" not in quiet.stderr


def test_the_readme_lists_the_queues_sweeps_as_the_script_runs_them():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("The queue's commands"):]
    block = block[block.index("```bash") + len("```bash"):block.index("```", block.index("```bash") + 7)]
    lines = [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    documented = [shlex.split(line) for line in lines if line.startswith("repro-train")]
    assert documented and documented == [c for c in dry_run() if c[0] == "repro-train"]
