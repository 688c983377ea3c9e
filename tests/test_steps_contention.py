"""scripts/steps_contention.sh: the quiet/neighbour series of repro-bench steps behind issue 12's
"the ratio survives a busy machine", as its dry run prints it."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dry_run(*args: str) -> list[str]:
    printed = subprocess.run(["bash", "scripts/steps_contention.sh", "--dry-run", *args], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in printed.splitlines() if line.strip()]


def test_every_task_and_thread_count_is_measured_quiet_and_beside_a_neighbour():
    lines = dry_run("--data", "/data", "--steps", "12")
    steps = [line for line in lines if "repro-bench steps" in line]
    neighbours = [line for line in lines if "while True" in line]
    assert len(steps) == 8 and len(neighbours) == 4
    outs = [line.split("--out ")[1] for line in steps]
    assert outs == [f"results/steps/contention-{task}-threads{n}-{host}" for task in ("cifar10_cnn", "multi30k_transformer")
                    for n in (2, 1) for host in ("quiet", "neighbour")]
    assert all("--steps 12" in line and "data.root=/data/" in line for line in steps)
    # with 1 thread on 2 cores the neighbour would take the idle core: both go on core 0
    for line in steps + neighbours:
        pinned = line.startswith("taskset -c 0 ")
        assert pinned == ("--threads 1" in line or ("while True" in line and neighbours.index(line) % 2 == 1)), line


def test_a_prefix_names_a_new_series_instead_of_overwriting_the_committed_one():
    outs = [line.split("--out ")[1] for line in dry_run("--prefix", "again") if "repro-bench steps" in line]
    assert len(outs) == 8 and all(out.startswith("results/steps/again-") for out in outs)
    result = subprocess.run(["bash", "scripts/steps_contention.sh", "--dry-run", "--prefix", "../x"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--prefix '../x'" in result.stderr


def test_a_bad_argument_is_one_line_naming_the_allowed_ones():
    result = subprocess.run(["bash", "scripts/steps_contention.sh", "--thread", "2"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == ("steps_contention.sh: unknown argument '--thread' "
                                     "(allowed: --data DIR, --steps N, --prefix NAME, --dry-run)")
