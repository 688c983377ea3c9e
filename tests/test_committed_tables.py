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
from repro.tables.render import TABLE_NAMES, find_step_timings, write_tables

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "results" / "tables"


def tables_job_stores() -> list[Path]:
    """The --runs folders of the queue's `repro-tables` command, as the script prints it."""
    printed = subprocess.run(["bash", "scripts/cpu_budget_runs.sh", "--dry-run", "--only", "tables"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in printed.splitlines() if line.startswith("repro-tables")]
    words = shlex.split(line)
    return [ROOT / words[i + 1] for i, word in enumerate(words) if word == "--runs"]


def committed_notes(markdown: str) -> list[str]:
    """The bold paragraphs between a table file's title and its first table row: its --note texts."""
    notes = []
    for line in markdown.splitlines()[1:]:
        if line.startswith("|") or line.startswith("#"):
            break
        if line.startswith("**") and line.endswith("**"):
            notes.append(line[2:-2])
    return notes


def test_committed_notes_are_read_back_whole():
    md = "# T (regenerated)\n\n**first note**\n\n**second, with *emphasis***\n\n| a |\n|---|\n\n**not a note**\n"
    assert committed_notes(md) == ["first note", "second, with *emphasis*"]


def test_committed_tables_regenerate_from_their_run_stores(tmp_path):
    stores = tables_job_stores()
    assert stores and all(store.is_dir() for store in stores), stores
    runs = dedupe(collect_local(stores))
    notes = {name: committed_notes((TABLES / f"{stem}.md").read_text())
             for name, stem in (("table4", "table4_transformer"), ("table10", "table10_cifar10"))}
    assert set(notes) == set(TABLE_NAMES)
    written = write_tables(runs, tmp_path, notes, find_step_timings(stores, runs))
    assert len(written) == 6
    for path in written:
        committed = TABLES / path.name
        assert path.read_text() == committed.read_text(), (
            f"results/tables/{path.name} is not what its run stores give: regenerate it "
            f"(scripts/cpu_budget_runs.sh --only tables)")
