"""The committed tables are what their committed runs give.

Regenerating results/tables from the run stores that scripts/cpu_budget_runs.sh's `tables` job
names, with the notes the committed files carry, reproduces every file byte for byte. A run
committed without regenerating the tables, a table regenerated from other stores, or a number
edited by hand fails here. (The notes are prose about the runs; the rows, intervals and verdicts
under them are what this checks.)
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from repro.tables import collect_local, dedupe
from repro.tables.render import TABLE_NAMES, find_step_timings, write_tables, written_notes

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "results" / "tables"


def tables_job_stores() -> list[Path]:
    """The --runs folders of the queue's `repro-tables` command, as the script prints it."""
    printed = subprocess.run(["bash", "scripts/cpu_budget_runs.sh", "--dry-run", "--only", "tables"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in printed.splitlines() if line.startswith("repro-tables")]
    words = shlex.split(line)
    return [ROOT / words[i + 1] for i, word in enumerate(words) if word == "--runs"]


def test_committed_tables_regenerate_from_their_run_stores(tmp_path):
    stores = tables_job_stores()
    assert stores and all(store.is_dir() for store in stores), stores
    runs = dedupe(collect_local(stores))
    notes = written_notes(ROOT / "results")
    assert set(notes) == set(TABLE_NAMES) and all(notes.values())
    written = write_tables(runs, tmp_path, notes, find_step_timings(stores, runs))
    assert len(written) == 6
    for path in written:
        committed = TABLES / path.name
        assert path.read_text() == committed.read_text(), (
            f"results/tables/{path.name} is not what its run stores give: regenerate it "
            f"(scripts/cpu_budget_runs.sh --only tables, or repro-tables ... --keep-notes to keep its notes)")
