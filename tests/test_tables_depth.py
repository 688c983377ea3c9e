"""The "failed to train" rule (repro.tables.outcome) and the depth section beside Table 4
(repro.tables.depth), on made-up run stores written by the run store itself."""
from __future__ import annotations

import math
import shutil

from repro.cli.tables import main
from repro.tables import collect_local, table4, verdicts
from repro.tables.collect import load_run
from repro.tables.outcome import FAILED_LOSS_FRACTION, judge
from repro.tables.render import to_markdown
from test_tables import write_run

LN_V = math.log(8000)


def translation_run(root, name, *, norm, seed=1, layers=3, experiment="multi30k_table4_cpu", val_loss=3.1,
                    bleu=34.0, steps=1800, nan_at=None, lr=0.002):
    """A Multi30k run: validation rows every third of the budget, test BLEU at the end; `nan_at`:
    the validation loss from that step on is NaN (the store writes null)."""
    val = []
    for step in (steps // 3, 2 * steps // 3, steps):
        loss = float("nan") if nan_at is not None and step >= nan_at else val_loss + (steps - step) / steps
        val.append((step, {"val/loss": loss, "val/bleu": bleu - (steps - step) / steps}))
    test = {"test/bleu": bleu, "test/test_2016_flickr/bleu": bleu, "val/loss": val[-1][1]["val/loss"]}
    return write_run(root, name, task="multi30k_transformer", norm=norm, seed=seed, steps=steps, val=val, test=test,
                     config={"experiment_name": experiment, "data": {"vocab_size": 8000, "max_tokens": 2048},
                             "model": {"dim": 128, "encoder_layers": layers, "decoder_layers": layers},
                             "optim": {"lr": lr}})


def test_the_rule_fails_nan_losses_flat_losses_and_no_bleu(tmp_path):
    ok = load_run(translation_run(tmp_path, "ok", norm="none"))
    assert judge(ok).failed is False and "BLEU 34.00" in judge(ok).reason
    nan = load_run(translation_run(tmp_path, "nan", norm="none", nan_at=1200))
    assert judge(nan).failed and judge(nan).reason == "loss NaN/inf at step 1200"
    # just above / below the loss threshold (BLEU fine): the loss alone decides
    flat = load_run(translation_run(tmp_path, "flat", norm="none", val_loss=FAILED_LOSS_FRACTION * LN_V + 0.01))
    assert judge(flat).failed and "x ln V" in judge(flat).reason
    learning = load_run(translation_run(tmp_path, "learning", norm="none", val_loss=FAILED_LOSS_FRACTION * LN_V - 0.05))
    assert judge(learning).failed is False
    mute = load_run(translation_run(tmp_path, "mute", norm="none", bleu=0.4))
    assert judge(mute).failed and judge(mute).reason == "BLEU 0.40 < 1"
    bare = load_run(write_run(tmp_path, "bare", task="multi30k_transformer", norm="none", seed=1))
    assert judge(bare).failed is None


def _tree(tmp_path, deep_none_nan: bool):
    main_root, deep_root = tmp_path / "multi30k_table4_cpu", tmp_path / "multi30k_nonorm_deep"
    for norm in ("none", "layernorm", "rmsnorm"):
        for seed in (1, 2):
            translation_run(main_root, f"{norm}{seed}", norm=norm, seed=seed, bleu=34.0 + seed / 10)
    for seed in (1, 2):
        translation_run(deep_root, f"none{seed}", norm="none", seed=seed, layers=6, steps=900,
                        experiment="multi30k_nonorm_deep", nan_at=600 if deep_none_nan else None,
                        bleu=0.0 if deep_none_nan else 20.0 + seed)
        translation_run(deep_root, f"layernorm{seed}", norm="layernorm", seed=seed, layers=6, steps=900,
                        experiment="multi30k_nonorm_deep", val_loss=3.5, bleu=25.0 + seed)
    return main_root, deep_root


def test_deep_runs_get_their_section_and_stay_out_of_the_table(tmp_path):
    main_root, deep_root = _tree(tmp_path, deep_none_nan=True)
    table = table4(collect_local([main_root, deep_root]))
    # Table 4's rows: the 3+3 runs only, two seeds each
    assert {row.norm: len(row.runs) for row in table.rows} == {"none": 2, "layernorm": 2, "rmsnorm": 2}
    md = to_markdown(table)
    assert "| None | 2 | 1800 | 34.15 ± 0.07 |" in md
    section = md[md.index("## Does the no-norm Transformer fail at depth?"):]
    assert "| 3+3 | 0.002 | None | 2 | 1800 | 3.10 ± 0.00 | 34.15 ± 0.07 | trained (2 of 2) |" in section
    assert "| 3+3 | 0.002 | LayerNorm | 2 | 1800 |" in section
    assert "| 6+6 | 0.002 | None | 2 | 900 | NaN | 0.00 ± 0.00 | failed (2 of 2: loss NaN/inf at step 600) |" in section
    assert "| 6+6 | 0.002 | LayerNorm | 2 | 900 | 3.50 ± 0.00 | 26.50 ± 0.71 | trained (2 of 2) |" in section
    assert "| 3+3 | 0.002 | RMSNorm" not in section
    assert "failed to train without a norm" in section and "the 3+3-layer model of the table above" in section
    assert ("Consistent with depth breaking the no-norm model, the paper's \"failed\": the deep model failed where "
            "its LayerNorm control trained, and the shallower no-norm model trained at this lr.") in section
    assert "One run per cell" not in section  # two seeds per cell
    assert "At lr 0.002, the 6+6-layer model without a norm failed to train" in section
    assert "x ln V" in section  # the rule is printed with the section
    assert any(line.startswith("depth: ") for line in verdicts(table))
    assert sum(line.startswith("no norm, ") for line in verdicts(table)) == 1  # the 3+3 row's verdict only


def test_single_runs_per_cell_are_called_an_observation(tmp_path):
    main_root, deep_root = _tree(tmp_path, deep_none_nan=True)
    for path in sorted(deep_root.iterdir()):
        if path.name.endswith("2"):  # keep seed 1 of each deep cell
            shutil.rmtree(path)
    md = to_markdown(table4(collect_local([main_root, deep_root])))
    assert "One run per cell: an observation, not an estimate" in md


def test_a_deep_no_norm_model_that_trains_contradicts_the_paper(tmp_path):
    main_root, deep_root = _tree(tmp_path, deep_none_nan=False)
    md = to_markdown(table4(collect_local([main_root, deep_root])))
    assert "| 6+6 | 0.002 | None | 2 | 900 | 3.10 ± 0.00 | 21.50 ± 0.71 | trained (2 of 2) |" in md
    assert "The paper's \"failed\" is not reproduced at 6+6 layers" in md


def test_without_deep_runs_there_is_no_section_and_the_cli_writes_it_with_them(tmp_path, capsys):
    main_root, deep_root = _tree(tmp_path, deep_none_nan=True)
    assert "fail at depth" not in to_markdown(table4(collect_local([main_root])))
    assert main(["--runs", str(main_root), "--runs", str(deep_root), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "tables" / "table4_transformer.md").read_text()
    assert "## Does the no-norm Transformer fail at depth?" in md and "| 6+6 | 0.002 | None | 2 | 900 |" in md
    assert "depth: The paper's Transformer base" in capsys.readouterr().out


def test_deep_runs_at_two_learning_rates_get_a_row_and_a_call_each(tmp_path):
    main_root, deep_root = _tree(tmp_path, deep_none_nan=True)
    flat = FAILED_LOSS_FRACTION * LN_V + 0.5  # the control stalls at the high lr ...
    for norm, kwargs in (("none", {"nan_at": 300, "bleu": 0.0}), ("layernorm", {"val_loss": flat, "bleu": 4.5})):
        for seed in (1, 2):
            translation_run(deep_root, f"{norm}{seed}", norm=norm, seed=seed, layers=6, steps=900,
                            experiment="multi30k_nonorm_deep", **kwargs)
    for norm, kwargs in (("none", {"nan_at": 600, "bleu": 0.0}), ("layernorm", {"val_loss": 3.5, "bleu": 25.0})):
        for seed in (1, 2):  # ... and trains at a quarter of it, where the no-norm model still diverges
            translation_run(deep_root, f"{norm}{seed}_low", norm=norm, seed=seed, layers=6, steps=900,
                            experiment="multi30k_nonorm_deep", lr=0.0005, **kwargs)
    md = to_markdown(table4(collect_local([main_root, deep_root])))
    section = md[md.index("## Does the no-norm Transformer fail at depth?"):]
    assert "| 6+6 | 0.002 | LayerNorm | 2 | 900 |" in section and "x ln V) |" in section
    assert "| 6+6 | 0.0005 | LayerNorm | 2 | 900 | 3.50 ± 0.00 | 25.00 ± 0.00 | trained (2 of 2) |" in section
    assert "| 6+6 | 0.0005 | None | 2 | 900 | NaN | 0.00 ± 0.00 | failed (2 of 2: loss NaN/inf at step 600) |" in section
    high, low = section.index("At lr 0.002,"), section.index("At lr 0.0005,")
    assert high < low  # one call per lr, the higher first: pooled, the two controls would disagree ("No call")
    assert "The control failed too" in section[high:low]
    # the 3+3 no-norm model ran at 0.002 only: the call at 0.0005 says so
    assert "the shallower no-norm model trained, though at another lr (not run at this one)" in section[low:]
    assert "No call" not in section


def _shallow_control(deep_root, *, none_nan_at=None, layers=3, lr=0.0005):
    """The depth experiment's own shallower pair at one lr, on the deep runs' 900 steps."""
    for seed in (1, 2):
        translation_run(deep_root, f"shallow_none{seed}", norm="none", seed=seed, layers=layers, steps=900, lr=lr,
                        experiment="multi30k_nonorm_deep", nan_at=none_nan_at,
                        bleu=0.0 if none_nan_at else 18.0 + seed)
        translation_run(deep_root, f"shallow_layernorm{seed}", norm="layernorm", seed=seed, layers=layers, steps=900,
                        lr=lr, experiment="multi30k_nonorm_deep", val_loss=3.4, bleu=22.0 + seed)


def _deep_at(deep_root, lr, layers=6):
    for seed in (1, 2):
        translation_run(deep_root, f"none{seed}", norm="none", seed=seed, layers=layers, steps=900, lr=lr,
                        experiment="multi30k_nonorm_deep", nan_at=600, bleu=0.0)
        translation_run(deep_root, f"layernorm{seed}", norm="layernorm", seed=seed, layers=layers, steps=900, lr=lr,
                        experiment="multi30k_nonorm_deep", val_loss=3.5, bleu=25.0 + seed)


def test_the_depth_experiments_shallow_pair_is_the_control_on_the_same_budget_and_lr(tmp_path):
    main_root, deep_root = _tree(tmp_path, deep_none_nan=True)
    _deep_at(deep_root, lr=0.0005)  # the deep pair at the lower lr (the table's 3+3 ran at 0.002 only)
    _shallow_control(deep_root, lr=0.0005)
    section = to_markdown(table4(collect_local([main_root, deep_root])))
    section = section[section.index("## Does the no-norm Transformer fail at depth?"):]
    # its own rows, apart from the table's 3+3 rows (another budget), which come first
    table_row = section.index("| 3+3 | 0.002 | None | 2 | 1800 |")
    own_row = section.index("| 3+3 | 0.0005 | None | 2 | 900 | 3.10 ± 0.00 | 19.50 ± 0.71 | trained (2 of 2) |")
    assert table_row < own_row < section.index("| 6+6 | 0.0005 | None | 2 | 900 |")
    assert "| 3+3 | 0.0005 | LayerNorm | 2 | 900 | 3.40 ± 0.00 | 23.50 ± 0.71 | trained (2 of 2) |" in section
    call = section[section.index("At lr 0.0005,"):]
    assert ("at 3+3 layers on the same budget, the model without a norm trained (2 of 2 runs) and with LayerNorm "
            "trained (2 of 2 runs).") in call
    assert "the shallower no-norm model trained on the same budget and lr." in call
    assert "though at another lr" not in section  # the main table is not what it leans on now


def test_a_shallow_control_that_fails_too_does_not_blame_depth(tmp_path):
    main_root, deep_root = _tree(tmp_path, deep_none_nan=True)
    _deep_at(deep_root, lr=0.0005)
    _shallow_control(deep_root, lr=0.0005, none_nan_at=600)
    md = to_markdown(table4(collect_local([main_root, deep_root])))
    call = md[md.index("At lr 0.0005,"):]
    assert call.split(". ", 2)[-1].startswith("Not depth alone: the deep model failed where its LayerNorm control "
                                              "trained, but the shallower no-norm model failed too")
    assert "Consistent with depth" not in call.split("\n")[0]


def test_the_deepest_model_is_found_by_its_layer_count_not_its_name(tmp_path):
    main_root, deep_root = _tree(tmp_path, deep_none_nan=True)
    for path in sorted(deep_root.iterdir()):
        shutil.rmtree(path)
    _deep_at(deep_root, lr=0.002, layers=12)
    _shallow_control(deep_root, lr=0.002, layers=6)  # "6+6" > "12+12" as text
    md = to_markdown(table4(collect_local([main_root, deep_root])))
    assert "the 12+12-layer model without a norm failed to train" in md
    assert "at 6+6 layers on the same budget, the model without a norm trained" in md
