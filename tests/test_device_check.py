"""scripts/device_check.sh's logic, proven on a CPU with its dry run (DRY_RUN=1): every step runs,
is time-boxed and recorded, a pytest stopped at its time box still leaves its junit XML, and
everything lands in $OUT in at most 8 files (what a device run returns)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.sh"


def _dry_run(out: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environ.update(DRY_RUN="1", OUT=str(out), PYTHON=sys.executable, WHEELS=str(out / "no-wheels"),
                   GATE_TIMEOUT_S="1", **env)
    return subprocess.run(["bash", str(SCRIPT)], env=environ, capture_output=True, text=True, timeout=600)


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


def test_dry_run_writes_every_result_into_out(tmp_path):
    out = tmp_path / "out"
    proc = _dry_run(out)
    summary = (out / "summary.txt").read_text()
    assert "DRY RUN" in summary and "device_check: done" in summary, proc.stdout[-2000:]
    for step in ("pytest-gpu", "gate", "steps", "bench"):
        assert f"{step}: exit" in summary, summary
    assert "pytest-gpu: exit 0" in summary and "steps: exit 0" in summary and "bench: exit 0" in summary, summary
    # the gate was cut at its 1 s box (timeout's 124) and recorded, the others went on
    assert "gate: exit 124" in summary and proc.returncode == 124, summary
    suite = ET.parse(out / "pytest-gpu.xml").getroot()
    assert int(suite.find("testsuite").get("skipped")) > 0  # gpu tests collected, skipped on a CPU
    assert (out / "bench" / "bench-quick.json").stat().st_size > 0
    steps = json.loads((out / "steps" / "steps.json").read_text())  # a GPU would say "cuda events"
    assert steps["timer"] == "wall clock" and set(steps["norms"]) == {"layernorm", "rmsnorm"}
    files = _files(out)
    assert {"summary.txt", "env.txt", "log.txt", "pytest-gpu.xml", "gate.json"} <= files
    assert len(files) <= 8, files


SLOW_TEST = """
import time
import pytest

@pytest.mark.gpu
def test_outlasts_the_time_box():
    time.sleep(120)
"""


def test_pytest_stopped_at_its_time_box_still_writes_junit(tmp_path):
    out = tmp_path / "out"
    slow = tmp_path / "test_slow.py"
    slow.write_text(SLOW_TEST)
    _dry_run(out, PYTEST_TARGETS=str(slow), PYTEST_TIMEOUT_S="15", BENCH_ARGS="--help")
    summary = (out / "summary.txt").read_text()
    assert "pytest-gpu: exit 124" in summary and "device_check: done" in summary, summary
    log = (out / "log.txt").read_text()
    assert "KeyboardInterrupt" in log  # SIGINT: pytest stopped the test and printed its summary
    assert ET.parse(out / "pytest-gpu.xml").getroot().find("testsuite") is not None
