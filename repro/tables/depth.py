""""Does the no-norm Transformer fail at depth?": the section beside Table 4.

The paper's Transformer base (6+6 layers, post-norm) failed to train without a norm; the 3+3
model of the CPU-budget Table 4 trained without one. experiment=multi30k_nonorm_deep trains the
6+6 model with no norm and with LayerNorm (the control) on a short budget, and the same pair at
3+3 layers on that budget (the shallow control: same lr, same steps); its runs (told apart by their
experiment_name) are kept out of Table 4's rows and shown here, with the main table's no-norm and
LayerNorm rows beside them, each run judged trained or failed by the one rule of
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


def depth(run: Run) -> int:
    """Encoder plus decoder layers (0 when the config does not say): what orders the models."""
    model = run.config.get("model") or {}
    return sum(n for n in (model.get("encoder_layers"), model.get("decoder_layers"))
               if isinstance(n, int) and not isinstance(n, bool))


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


def _any_failed(runs: list[Run]) -> Optional[bool]:
    """True: some judged run failed; False: every judged run trained; None: none judged. For the
    shallower model a depth call leans on: one failure there is enough to doubt that depth did it."""
    judged = [o.failed for o in (judge(r) for r in runs) if o.failed is not None]
    return any(judged) if judged else None


def learning_rate(run: Run) -> Optional[float]:
    """The run's peak learning rate (optim.lr); None when its config does not record one."""
    lr = (run.config.get("optim") or {}).get("lr")
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


def _lr_cell(lr: Optional[float]) -> str:
    return "?" if lr is None else f"{lr:g}"


def _call(none_failed: Optional[bool], ln_failed: Optional[bool], shallow_failed: Optional[bool], deep: str,
          shallow_where: str = " at this lr", single_runs: bool = False) -> str:
    """The call at one lr. shallow_failed: whether the shallower no-norm model it is compared with
    failed in any run (None: not run or unjudged); shallow_where: how that comparison was made, with
    its leading separator (" on the same budget and lr", " at this lr", ", though at another lr ...")."""
    if none_failed is None or ln_failed is None:
        return "No call: runs are missing, unjudged or disagree between seeds."
    if none_failed and ln_failed:
        return "The control failed too: this budget cannot tell depth from the set-up."
    if none_failed:
        caveat = (" One run per cell: an observation, not an estimate of how often the model fails."
                  if single_runs else "")
        if shallow_failed:  # the no-norm model fails at either depth: not depth's doing alone
            return (f"Not depth alone: the deep model failed where its LayerNorm control trained, but the shallower "
                    f"no-norm model failed too (in some or all of its runs{shallow_where}), so this budget does "
                    f"not single out depth.{caveat}")
        shallow = "" if shallow_failed is None else f", and the shallower no-norm model trained{shallow_where}"
        return (f"Consistent with depth breaking the no-norm model, the paper's \"failed\": the deep model failed "
                f"where its LayerNorm control trained{shallow}.{caveat}")
    if ln_failed:
        return "The no-norm model trained where its LayerNorm control failed: this budget says nothing about the paper's \"failed\"."
    return (f"The paper's \"failed\" is not reproduced at {deep} layers on this budget (other data, width and "
            f"schedule): depth alone does not break the no-norm model here.")


def depth_verdict(depth_runs: list[Run], main_runs: list[Run]) -> str:
    """The deep no-norm model and its LayerNorm control against the paper's "failed" and against a
    shallower no-norm model: the depth experiment's own shallower runs at the same lr (same budget)
    where it has them, else the main table's. One call per learning rate the deep runs were made
    at (a post-norm model that fails at one lr may train at a lower one, so they are not pooled)."""
    deepest = max((depth(r) for r in depth_runs), default=0)
    deep_runs = [r for r in depth_runs if depth(r) == deepest]
    deep = layers(deep_runs[0]) if deep_runs else "6+6"
    main_none = [r for r in main_runs if r.norm == "none"]
    main_layers = "/".join(sorted({layers(r) for r in main_none})) or "shallower"
    main_lrs = "/".join(_lr_cell(lr) for lr in sorted({learning_rate(r) for r in main_none}, key=str))
    sentences = [f"The paper's Transformer base (6+6 layers, post-norm, WMT14) failed to train without a norm. "
                 f"Here {_summary(main_none, f'the {main_layers}-layer model of the table above without a norm')}"
                 + (f" (lr {main_lrs})." if main_none else ".")]
    lrs = sorted({learning_rate(r) for r in deep_runs}, key=lambda lr: (lr is None, -(lr or 0.0))) or [None]
    for lr in lrs:
        runs = [r for r in deep_runs if learning_rate(r) == lr]
        deep_none = [r for r in runs if r.norm == "none"]
        deep_ln = [r for r in runs if r.norm == "layernorm"]
        at = f"At lr {_lr_cell(lr)}" if lr is not None else "At an unrecorded lr"
        sentence = (f"{at}, {_summary(deep_none, f'the {deep}-layer model without a norm')} and "
                    f"{_summary(deep_ln, f'its LayerNorm control on the same budget')}")
        # the shallow control on the same budget and lr, where the depth experiment made it
        shallow_runs = [r for r in depth_runs if depth(r) < deepest and learning_rate(r) == lr]
        shallow_none = [r for r in shallow_runs if r.norm == "none"]
        shallow_ln = [r for r in shallow_runs if r.norm == "layernorm"]
        if shallow_none:
            shallow = "/".join(sorted({layers(r) for r in shallow_none}))
            sentence += (f"; at {shallow} layers on the same budget, "
                         f"{_summary(shallow_none, 'the model without a norm')}"
                         + (f" and {_summary(shallow_ln, 'with LayerNorm')}" if shallow_ln else ""))
            compared, where = shallow_none, " on the same budget and lr"
        else:
            compared = main_none
            where = (" at this lr" if lr in {learning_rate(r) for r in main_none}
                     else ", though at another lr (not run at this one)")
        cells = [deep_none, deep_ln] + ([shallow_none] if shallow_none else [])
        sentences.append(sentence + ". " + _call(_state(deep_none), _state(deep_ln), _any_failed(compared), deep,
                                                 shallow_where=where,
                                                 single_runs=min(len(c) for c in cells) == 1))
    return " ".join(sentences)


def depth_section(depth_runs: list[Run], main_runs: list[Run]) -> tuple[list[str], str]:
    """(Markdown lines of the section, its verdict sentences): one row per (layers, lr, norm) over the
    deep runs and the main table's no-norm and LayerNorm runs of the same task, then the verdict."""
    completed = [r for r in depth_runs if r.state == "completed"]
    tasks = {r.task for r in completed}
    main = [r for r in main_runs if r.norm in DEPTH_NORMS and r.task in tasks and r.state == "completed"]
    groups: dict[tuple, list[Run]] = {}
    # a row per model, lr, norm and source: the table's own runs apart from the depth experiment's
    # runs of the same model (another budget), the table's first
    for run in sorted(main + completed, key=lambda r: (depth(r), layers(r), -(learning_rate(r) or 0.0),
                                                       is_depth_run(r), DEPTH_NORMS.index(r.norm)
                                                       if r.norm in DEPTH_NORMS else len(DEPTH_NORMS),
                                                       str(r.seed), str(r.path))):
        groups.setdefault((layers(run), learning_rate(run), run.norm, is_depth_run(run)), []).append(run)
    body = []
    for (_, lr, norm, _), runs in groups.items():
        steps = "/".join(str(s) for s in sorted({r.summary.get("step") for r in runs if r.summary.get("step")})) or "?"
        body.append([layers(runs[0]), _lr_cell(lr), NORMS[norm].label if norm in NORMS else norm, str(len(runs)), steps,
                     _stat_cell([final_val_loss(r) for r in runs]), _stat_cell([final_bleu(r) for r in runs]),
                     _outcome_cell(runs)])
    lines = [f"## {TITLE}", ""]
    if body:
        lines += [*markdown_table(["layers (enc+dec)", "lr", "norm", "seeds", "steps", "final val loss", "BLEU",
                                   "trained / failed"], body), ""]
    lines += [f"Rows: the runs of experiment={DEPTH_EXPERIMENT} (each model at each lr on one budget) and the "
              f"table's own no-norm and LayerNorm rows; "
              f"lr: the peak learning rate (optim.lr); cells mean ± sample std over seeds. BLEU: test sacreBLEU, else the last validation BLEU. "
              f"The rule (repro.tables.outcome): {RULE}.", ""]
    verdict = depth_verdict(completed, main)
    lines.append(verdict)
    left_out = [r for r in depth_runs if r.state != "completed"]
    if left_out:
        lines += ["", *[f"- excluded, {r.state}: {r.path} (status {r.status}, step {r.summary.get('step', '?')})"
                        for r in left_out]]
    return lines, verdict
