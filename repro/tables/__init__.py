"""The paper's tables and figures, regenerated from runs (local run stores or W&B)."""
from .collect import Run, Stat, collect_local, dedupe, fetch_wandb, group_runs, load_run
from .paper import TABLE4, TABLE10, PaperTable
from .render import table4, table10, verdicts, write_tables

__all__ = ["Run", "Stat", "PaperTable", "TABLE4", "TABLE10", "collect_local", "dedupe", "fetch_wandb",
           "group_runs", "load_run", "table4", "table10", "verdicts", "write_tables"]
