""""Does the no-norm Transformer fail at depth?": the section beside Table 4.

The paper's Transformer base (6+6 layers, post-norm) failed to train without a norm; the 3+3
model of the CPU-budget Table 4 trained without one. experiment=multi30k_nonorm_deep trains the
6+6 model with no norm and with LayerNorm (the control) on a short budget; its runs (told apart
by their experiment_name) are kept out of Table 4's rows and shown here, with the main table's
no-norm and LayerNorm rows beside them, each run judged trained or failed by the one rule of
repro.tables.outcome.
"""
from __future__ import annotations

import math
from typing import Optional

from repro.nn import NORMS
from repro.util import markdown_table

from .collect import Run, Stat
from .outcome import RULE, final_bleu, final_val_loss, judge

DEPTH_EXPERIMENT = "multi30k_nonorm_deep"  # conf/experiment/multi30k_nonorm_deep.yaml
DEPTH_NORMS = ("none", "layernorm")
TITLE = "Does the no-norm Transformer fail at depth?"


def is_depth_run(run: Run) -> bool:
    return run.config.get("experiment_name") == DEPTH_EXPERIMENT


def layers(run: Run) -> str:
    model = run.config.get("model") or {}
    return f"{model.get('encoder_layers', '?')}+{model.get('decoder_layers', '?')}"


def _stat_cell(values: list) -> str:
    """mean ± std of the finite values; "NaN" when every measured value was NaN/inf."""
    stat = Stat([v for v in values if v is not None and math.isfinite(v)])
    if not stat.n:
        return "NaN" if any(v is not None for v in values) else "missing"
    text = f"{stat.mean:.2f}" + (f" ± {stat.std:.2f}" if stat.std is not None else "")
    return text + (f" (n={stat.n})" if stat.n != len(values) else "")


def _outcome_cell(runs: list[Run]) -> str:
    outcomes = [judge(r) for r in runs]
    judged = [o for o in outcomes if o.failed is not None]
    failed = [o for o in judged if o.failed]
    if not judged:
        return "not judged (nothing measured)"
    if not failed:
        return f"trained ({len(judged)} of {len(judged)})"
    return f"failed ({len(failed)} of {len(judged)}: {failed[0].reason})"


def _summary(runs: list[Run], what: str) -> str:
    """What happened to a group, as a clause: 'trained (2 of 2 runs)', 'failed to train (...)'."""
    if not runs:
        return f"{what} has no runs (missing)"
    judged = [o for o in (judge(r) for r in runs) if o.failed is not None]
    failed = [o for o in judged if o.failed]
    if not judged:
        return f"{what} could not be judged (no validation loss or BLEU)"
    if not failed:
        return f"{what} trained ({len(judged)} of {len(judged)} runs)"
    return f"{what} failed to train ({len(failed)} of {len(judged)} runs; {failed[0].reason})"


def _state(runs: list[Run]) -> Optional[bool]:
    """True: every judged run failed; False: none failed; None: no judged runs or mixed."""
    judged = [o.failed for o in (judge(r) for r in runs) if o.failed is not None]
    if not judged or (any(judged) and not all(judged)):
        return None
    return all(judged)


def learning_rate(run: Run) -> Optional[float]:
    """The run's peak learning rate (optim.lr); None when its config does not record one."""
    lr = (run.config.get("optim") or {}).get("lr")
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


def _lr_cell(lr: Optional[float]) -> str:
    return "?" if lr is None else f"{lr:g}"


def _call(none_failed: Optional[bool], ln_failed: Optional[bool], shallow_failed: Optional[bool], deep: str,
          shallow_same_lr: bool = True, single_runs: bool = False) -> str:
    if none_failed is None or ln_failed is None:
        return "No call: runs are missing, unjudged or disagree between seeds."
    if none_failed and ln_failed:
        return "The control failed too: this budget cannot tell depth from the set-up."
    if none_failed:
        if shallow_failed is False:
            shallow = (", and the shallower no-norm model trained at this lr" if shallow_same_lr else
                       ", and the shallower no-norm model trained, though at another lr (not run at this one)")
        else:
            shallow = ""
        caveat = (" One run per cell: an observation, not an estimate of how often the model fails."
                  if single_runs else "")
        return (f"Consistent with depth breaking the no-norm model, the paper's \"failed\": the deep model failed "
                f"where its LayerNorm control trained{shallow}.{caveat}")
    if ln_failed:
        return "The no-norm model trained where its LayerNorm control failed: this budget says nothing about the paper's \"failed\"."
    return (f"The paper's \"failed\" is not reproduced at {deep} layers on this budget (other data, width and "
            f"schedule): depth alone does not break the no-norm model here.")


def depth_verdict(depth_runs: list[Run], main_runs: list[Run]) -> str:
    """The deep no-norm model and its LayerNorm control against the paper's "failed" and against the
    shallower no-norm model of the main table: one call per learning rate the deep runs were made
    at (a post-norm model that fails at one lr may train at a lower one, so they are not pooled)."""
    deep = max((layers(r) for r in depth_runs), default="6+6")
    shallow_none = [r for r in main_runs if r.norm == "none"]
    shallow = "/".join(sorted({layers(r) for r in shallow_none})) or "shallower"
    shallow_lrs = "/".join(_lr_cell(lr) for lr in sorted({learning_rate(r) for r in shallow_none}, key=str))
    sentences = [f"The paper's Transformer base (6+6 layers, post-norm, WMT14) failed to train without a norm. "
                 f"Here {_summary(shallow_none, f'the {shallow}-layer model of the table above without a norm')}"
                 + (f" (lr {shallow_lrs})." if shallow_none else ".")]
    lrs = sorted({learning_rate(r) for r in depth_runs}, key=lambda lr: (lr is None, -(lr or 0.0))) or [None]
    for lr in lrs:
        runs = [r for r in depth_runs if learning_rate(r) == lr]
        deep_none = [r for r in runs if r.norm == "none"]
        deep_ln = [r for r in runs if r.norm == "layernorm"]
        at = f"At lr {_lr_cell(lr)}" if lr is not None else "At an unrecorded lr"
        sentences.append(
            f"{at}, {_summary(deep_none, f'the {deep}-layer model without a norm')} and "
            f"{_summary(deep_ln, f'its LayerNorm control on the same budget')}. "
            + _call(_state(deep_none), _state(deep_ln), _state(shallow_none), deep,
                    shallow_same_lr=lr in {learning_rate(r) for r in shallow_none},
                    single_runs=min(len(deep_none), len(deep_ln)) == 1))
    return " ".join(sentences)


def depth_section(depth_runs: list[Run], main_runs: list[Run]) -> tuple[list[str], str]:
    """(Markdown lines of the section, its verdict sentences): one row per (layers, lr, norm) over the
    deep runs and the main table's no-norm and LayerNorm runs of the same task, then the verdict."""
    completed = [r for r in depth_runs if r.state == "completed"]
    tasks = {r.task for r in completed}
    main = [r for r in main_runs if r.norm in DEPTH_NORMS and r.task in tasks and r.state == "completed"]
    groups: dict[tuple, list[Run]] = {}
    for run in sorted(main + completed, key=lambda r: (layers(r), -(learning_rate(r) or 0.0),
                                                       DEPTH_NORMS.index(r.norm) if r.norm in DEPTH_NORMS
                                                       else len(DEPTH_NORMS), str(r.seed), str(r.path))):
        groups.setdefault((layers(run), learning_rate(run), run.norm), []).append(run)
    body = []
    for (depth, lr, norm), runs in groups.items():
        steps = "/".join(str(s) for s in sorted({r.summary.get("step") for r in runs if r.summary.get("step")})) or "?"
        body.append([depth, _lr_cell(lr), NORMS[norm].label if norm in NORMS else norm, str(len(runs)), steps,
                     _stat_cell([final_val_loss(r) for r in runs]), _stat_cell([final_bleu(r) for r in runs]),
                     _outcome_cell(runs)])
    lines = [f"## {TITLE}", ""]
    if body:
        lines += [*markdown_table(["layers (enc+dec)", "lr", "norm", "seeds", "steps", "final val loss", "BLEU",
                                   "trained / failed"], body), ""]
    lines += [f"Rows: the runs of experiment={DEPTH_EXPERIMENT} and the table's own no-norm and LayerNorm rows; "
              f"lr: the peak learning rate (optim.lr); cells mean ± sample std over seeds. BLEU: test sacreBLEU, else the last validation BLEU. "
              f"The rule (repro.tables.outcome): {RULE}.", ""]
    verdict = depth_verdict(completed, main)
    lines.append(verdict)
    left_out = [r for r in depth_runs if r.state != "completed"]
    if left_out:
        lines += ["", *[f"- excluded, {r.state}: {r.path} (status {r.status}, step {r.summary.get('step', '?')})"
                        for r in left_out]]
    return lines, verdict
