"""A saved W&B report of a sweep for people with a W&B account: runs grouped by task and norm,
the standard panels (loss curves, BLEU/accuracy, norm latency share, step time, throughput,
drift). Built with wandb-workspaces (`pip install 'repro[report]'`); building needs no network,
saving needs a W&B login.
"""
from __future__ import annotations

from typing import Optional

GROUP_BY = ["config.task.name", "config.norm.name", "config.norm.partial"]
SECTIONS = (
    ("Loss", ["train/loss", "val/loss"]),
    ("Quality", ["val/bleu", "test/bleu", "val/acc", "test/acc"]),
    ("Norm latency", ["time/norm_share", "time/norm_fwd_ms", "time/norm_bwd_ms"]),
    ("Speed", ["time/step_ms", "throughput/tokens_per_s", "throughput/images_per_s"]),
)
DRIFT_REGEX = "drift/.*"  # one line per norm layer: |mean|/RMS and pRMSNorm's estimate error


def _reports():
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise RuntimeError("--make-report needs wandb-workspaces: pip install 'repro[report]' "
                           "(or pip install wandb-workspaces)") from None
    return wr


def run_filter(group: Optional[str], tags: Optional[list[str]]) -> str:
    """The runset filter for --group / --tags, in wandb-workspaces' expression syntax."""
    parts = []
    if group:
        parts.append(f"Metric('Group') == {group!r}")
    if tags:
        parts.append(f"Tags() in {list(tags)!r}")
    return " and ".join(parts)


def build_report(project: str, *, group: Optional[str] = None, tags: Optional[list[str]] = None,
                 title: Optional[str] = None):
    """The report object for ENTITY/PROJECT (not saved)."""
    wr = _reports()
    entity, name = project.split("/", 1)
    runset = wr.Runset(entity=entity, project=name, name=group or "all runs", filters=run_filter(group, tags),
                       groupby=list(GROUP_BY))
    blocks = [
        wr.H1("RMSNorm reproduction: runs grouped by task and norm"),
        wr.P("Lines are the mean over the seeds of a (task, norm, partial) group, bands one standard "
             "deviation. Tables with the paper's numbers beside them: repro-tables --wandb "
             f"{project}" + (f" --group {group}" if group else "") + "."),
    ]
    for section, metrics in SECTIONS:
        panels = [wr.LinePlot(title=m, y=[m], groupby_aggfunc="mean", groupby_rangefunc="stddev") for m in metrics]
        blocks += [wr.H2(section), wr.PanelGrid(runsets=[runset], panels=panels)]
    blocks += [wr.H2("Drift (track.drift=true)"),
               wr.PanelGrid(runsets=[runset], panels=[wr.LinePlot(title="norm input drift", metric_regex=DRIFT_REGEX)])]
    return wr.Report(project=name, entity=entity, title=title or f"RMSNorm reproduction: {group or name}",
                     description="Built by repro-tables --make-report", blocks=blocks)


def save_report(report) -> str:
    try:
        report.save()
    except Exception as error:  # noqa: BLE001 - login / network problems, reported in one line
        raise RuntimeError(f"--make-report: saving to W&B failed ({error}); log in with `wandb login`") from None
    return report.url
