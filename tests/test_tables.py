"""repro-tables on run trees written by the run store itself: every number checked against the run
files (mean, sample std, seed counts, ratios), missing and partial sweeps rendered as such, W&B runs
through a stand-in of the public API (no network) into the cache and back offline, the CLI."""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from repro.cli.tables import main
from repro.tables import collect_local, dedupe, fetch_wandb, table4, table10, verdicts
from repro.tables.collect import history_to_rows
from repro.tables.render import notes_in, steps_per_epoch, to_csv, to_latex, to_markdown, write_tables, written_notes
from repro.track import RunStore
from train_helpers import cifar_jpeg, one_thread  # noqa: F401


def write_run(root: Path, name: str, *, task: str, norm: str, seed: int, partial=None, status="completed",
              step_ms=(120.0, 50.0, 52.0), norm_ms=(3.0, 5.0), test: dict = None, val=(), batch_size=100,
              val_size=5000, steps=30, wandb_id=None, config: dict = None) -> Path:
    """A run directory as repro.train.run writes it: config.yaml, metrics.jsonl, summary.json."""
    run_dir = root / name
    store = RunStore(run_dir)
    store.write_config({
        "seed": seed, "task": {"name": task}, "data": {"batch_size": batch_size, "val_size": val_size},
        "norm": {"name": norm, "partial": partial if partial is not None else 0.0625, "backend": "auto"},
        **(config or {}),
    })
    for i, ms in enumerate(step_ms):
        store.log(10 * (i + 1), "train", {
            "train/loss": 2.0 / (i + 1) + seed * 0.01, "time/step_ms": ms, "time/norm_fwd_ms": norm_ms[0],
            "time/norm_bwd_ms": norm_ms[1], "time/norm_share": sum(norm_ms) / ms, "throughput/images_per_s": 1e3,
        })
    for step, metrics in val:
        store.log(step, "val", metrics)
    store.update_summary(status="running", task=task, norm=norm, partial=partial if norm == "prmsnorm" else None,
                         seed=seed, environment={"device": "test-cpu", "torch": "x"})
    store.update_summary(step=steps, status=status, **(test or {}), **{"time/step_ms": sum(step_ms) / len(step_ms)})
    store.close()
    if wandb_id:
        (run_dir / "wandb_id.txt").write_text(wandb_id + "\n")
    return run_dir


def read_csv(path: Path) -> dict:
    return {(r["norm"], r["partial"]): r for r in csv.DictReader(path.open())}


@pytest.fixture
def cifar_tree(tmp_path) -> Path:
    root = tmp_path / "multirun"
    accs = {"layernorm": [0.90, 0.88, 0.89], "rmsnorm": [0.91, 0.905], "prmsnorm": [0.87]}
    for norm, values in accs.items():
        for seed, acc in enumerate(values, 1):
            write_run(root, f"{norm}_{seed}", task="cifar10_cnn", norm=norm, seed=seed,
                      partial=0.125 if norm == "prmsnorm" else None, test={"test/acc": acc},
                      step_ms=(500.0, 60.0 + seed, 62.0) if norm == "layernorm" else (400.0, 50.0 + seed, 49.0),
                      norm_ms=(4.0, 6.0) if norm == "layernorm" else (2.0, 3.0),
                      val=[(15, {"val/acc": acc - 0.1, "val/loss": 1.0}), (30, {"val/acc": acc, "val/loss": 0.5})])
    write_run(root, "rmsnorm_crashed", task="cifar10_cnn", norm="rmsnorm", seed=9, status="failed")
    write_run(root, "vit_1", task="cifar10_vit", norm="rmsnorm", seed=1, test={"test/acc": 0.7})
    return root


def test_table10_numbers_match_the_run_files(cifar_tree, tmp_path):
    runs = collect_local([cifar_tree])
    assert len(runs) == 8
    table = table10(runs)
    # every paper row, measured or not, in the paper's order
    assert [row.norm for row in table.rows] == ["none", "batchnorm", "weightnorm", "layernorm", "rmsnorm", "prmsnorm"]
    by_norm = {row.norm: row for row in table.rows if row.runs}
    assert list(by_norm) == ["layernorm", "rmsnorm", "prmsnorm"]  # the ViT run is not Table 10's

    # recompute from the files: summary test/acc, metrics.jsonl step times after the first interval
    def from_files(norm):
        errors, step_times = [], []
        for run_dir in sorted(cifar_tree.glob(f"{norm}_[0-9]")):
            errors.append(100 * (1 - json.loads((run_dir / "summary.json").read_text())["test/acc"]))
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            times = [r["time/step_ms"] for r in rows if r["split"] == "train"][1:]
            step_times.append(sum(times) / len(times))
        return errors, step_times

    for norm, row in by_norm.items():
        errors, step_times = from_files(norm)
        assert row.cells["error"].n == len(errors) == len(row.runs)
        assert row.cells["error"].mean == pytest.approx(statistics.fmean(errors))
        assert row.cells["step_ms"].mean == pytest.approx(statistics.fmean(step_times))
        # 45k training images at batch 100: 450 steps per epoch
        assert row.cells["time"].mean == pytest.approx(statistics.fmean(step_times) * 450 / 1e3)
        if len(errors) > 1:
            assert row.cells["error"].std == pytest.approx(statistics.stdev(errors))
        else:
            assert row.cells["error"].std is None
    assert "rmsnorm_crashed" in " ".join(table.notes)

    write_tables(runs, tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "tables" / "table10_cifar10.csv")
    ln_time = statistics.fmean(from_files("layernorm")[1])
    rms_time = statistics.fmean(from_files("rmsnorm")[1])
    assert float(rows[("rmsnorm", "")]["speedup_vs_layernorm"]) == pytest.approx(ln_time / rms_time)
    assert rows[("prmsnorm", "0.125")]["error_n"] == "1" and rows[("prmsnorm", "0.125")]["error_std"] == ""
    assert float(rows[("layernorm", "")]["norm_ms_mean"]) == pytest.approx(10.0)


def test_markdown_shows_seeds_spread_verdicts_and_the_paper(cifar_tree):
    table = table10(collect_local([cifar_tree]))
    md = to_markdown(table)
    assert "| RMSNorm | 2 | 30 | 9.25 ± 0.35 |" in md  # errors 9.0 and 9.5
    assert "| pRMSNorm (p=12.5%) | 1 | 30 | 13.00 |" in md  # one seed: no spread shown
    assert "10.49" in md and "GeForce RTX 2080 Ti" in md and "Table 10" in md  # the published numbers
    lines = verdicts(table)
    rms_quality = next(line for line in lines if line.startswith("quality") and "RMSNorm vs" in line
                       and "pRMS" not in line)
    # Δ = 9.25 - 11.0 = -1.75: better than LayerNorm by more than the tolerance
    assert "Δ = -1.75" in rms_quality and "better" in rms_quality
    assert "Welch t-interval" in rms_quality and "(n = 2 vs 3" in rms_quality
    assert "not comparable to the paper's numbers" in rms_quality and "of 200 epochs" in rms_quality
    prms_quality = next(line for line in lines if line.startswith("quality") and "pRMSNorm" in line)
    assert "no interval with a single seed -> inconclusive" in prms_quality
    speed = next(line for line in lines if line.startswith("speed") and "RMSNorm vs" in line and "pRMS" not in line)
    assert "norm time 2.00x [" in speed and "test-cpu" in speed and "paper: 1.26x" in speed
    assert "no speed verdict: not measured under controlled conditions" in speed
    assert "x* |" in md  # the speed column is marked as uncontrolled
    rms_row = next(line for line in md.splitlines() if line.startswith("| RMSNorm |"))
    assert rms_row.count("*") == 5  # so are the runs' own time cells: s / epoch, ms / step, norm ms, share
    assert "†" not in "\n".join(line for line in md.splitlines() if line.startswith("|"))


def test_quality_calls_use_welch_t_intervals():
    from repro.tables.collect import Stat
    from repro.tables.render import quality_verdict

    kept = quality_verdict("err", Stat([10.0, 10.1, 10.2, 10.1]), Stat([10.1, 10.2, 10.0, 10.1]), higher_is_better=False)
    assert kept.endswith("-> kept (at most 0.5 worse)")
    # Two seeds each, Δ = -0.1, SE = 0.14: ±2·SE would call this kept, but the t quantile at ~2
    # degrees of freedom is ~4.3 and the interval reaches 0.71 points worse: inconclusive.
    two = quality_verdict("err", Stat([10.0, 10.2]), Stat([10.1, 10.3]), higher_is_better=False)
    assert two.endswith("-> inconclusive") and "[-0.71, +0.51]" in two and "df 2.0" in two
    lost = quality_verdict("bleu", Stat([20.0, 20.1, 19.9]), Stat([25.0, 25.1, 24.9]), higher_is_better=True)
    assert lost.endswith("-> worse (by more than 0.5)") and "worse than LayerNorm" in lost
    assert "missing" in quality_verdict("bleu", Stat([]), Stat([1.0]), higher_is_better=True)
    better = quality_verdict("err", Stat([5.0, 5.1, 4.9]), Stat([10.0, 10.1, 9.9]), higher_is_better=False)
    assert "better than LayerNorm" in better and better.endswith("-> better")
    higher = quality_verdict("bleu", Stat([27.0, 27.2, 27.1]), Stat([26.0, 26.1, 26.2]), higher_is_better=True)
    assert higher.endswith("-> better")
    single = quality_verdict("bleu", Stat([3.0]), Stat([3.0]), higher_is_better=True)
    assert "(same as LayerNorm)" in single and single.endswith("-> inconclusive")


def test_welch_interval_matches_scipy_and_the_t_quantile():
    from scipy import stats as scipy_stats

    from repro.tables.stats import ratio_interval, welch_interval

    a, b = [35.1, 35.6, 34.9], [34.5, 35.0]
    interval = welch_interval(a, b)
    ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (interval.low, interval.high) == pytest.approx((ci.low, ci.high))
    # equal spreads, 2 + 2 values: df = 2 and the half-width is t(0.975, 2) = 4.30 standard errors
    two = welch_interval([1.0, 2.0], [0.0, 1.0])
    assert two.df == pytest.approx(2.0) and two.high - two.estimate == pytest.approx(4.303 * 0.7071, rel=1e-3)
    assert welch_interval([1.0], [1.0, 2.0]) is None
    ratio = ratio_interval([100.0, 110.0, 105.0], [50.0, 55.0, 52.0])
    assert ratio.estimate == pytest.approx(105 / 52.333, rel=1e-3) and ratio.low < ratio.estimate < ratio.high


def test_speed_verdict_only_from_an_uncontended_host_of_one_kind(tmp_path):
    def tree(contended, seed3_capability="AVX512"):
        root = tmp_path / f"contended_{contended}_{seed3_capability}"
        for norm, times in (("layernorm", (100.0, 101.0, 99.0)), ("rmsnorm", (80.0, 81.0, 79.0))):
            for seed in (1, 2, 3):
                run = write_run(root, f"{norm}{seed}", task="cifar10_cnn", norm=norm, seed=seed,
                                test={"test/acc": 0.9}, step_ms=(500.0, *[t + seed for t in times]))
                summary = json.loads((run / "summary.json").read_text())
                summary["environment"].update(contended=contended, cpu_model="AMD EPYC", cpu_count=2,
                                              cpu_capability=seed3_capability if seed == 3 else "AVX512")
                if seed == 3 and seed3_capability == "AVX2":  # resumed there with bf16 emulated
                    summary["starts"] = [{"step": 0, "bf16_matmul": "native"}, {"step": 500, "bf16_matmul": "emulated"}]
                (run / "summary.json").write_text(json.dumps(summary))
        table = table10(collect_local([root]))
        return [line for line in verdicts(table) if line.startswith("speed")][0], to_markdown(table)

    verdict, md = tree(False)
    assert "-> faster" in verdict and "AMD EPYC (AVX512, 2 CPUs)" in verdict
    assert "no speed verdict: not measured under controlled conditions" in tree(True)[0]
    # seed 3 of both norms on the same VM model with AVX-512 hidden: the times do not compare
    verdict, md = tree(False, seed3_capability="AVX2")
    assert "no speed verdict" in verdict
    assert ("runs on different kinds of machine (their time columns mix them): AMD EPYC (AVX2, 2 CPUs): "
            "layernorm3, rmsnorm3; AMD EPYC (AVX512, 2 CPUs): ") in md
    assert "bf16 convolutions and matrix products were emulated" in md and md.count("all or part of their steps: "
                                                                                   "layernorm3, rmsnorm3\n") == 1
    assert "emulated" not in tree(False)[1]


def test_speed_calls_need_an_interval_beyond_the_drift_between_sessions():
    from repro.tables.render import SAME_SPEED_BAND, speed_call

    assert speed_call(0.75, 0.85) == "faster" and speed_call(1.10, 1.30) == "slower"
    # excludes 1 but lies inside the band: a 1 % lead that a rerun in another hour can reverse
    assert speed_call(0.985, 0.999).startswith("the same speed") and speed_call(1.001, 1.02).startswith("the same")
    assert speed_call(0.90, 1.05).startswith("inconclusive")
    # the measured reversal between two sessions of the same code (1.043 [1.017, 1.079], then
    # 0.966 [0.943, 0.987]) gets one call, not "slower" and then "faster"
    assert speed_call(1.017, 1.079) == speed_call(0.943, 0.987) == speed_call(0.985, 0.999)
    # beyond 1 but reaching into the band: no call either way
    assert speed_call(1.02, 1.10).startswith("inconclusive (the interval reaches into the ±8% step-time drift")
    edge = 1 - SAME_SPEED_BAND
    assert speed_call(edge - 0.05, edge - 0.001) == "faster" and speed_call(edge - 0.05, edge).startswith("inconclusive")
    assert speed_call(edge, 0.99).startswith("the same")


def test_speed_comes_from_paired_step_timings_stored_next_to_the_runs(cifar_tree, tmp_path, capsys):
    """A steps.json (repro-bench steps) in the runs' folder replaces the training runs' wall clock
    in the speed column and gives the speed verdict, with its interval."""
    steps = {"kind": "repro-bench steps", "format": 1, "task": "cifar10_cnn", "created": "2026-01-01T00:00:00",
             "rounds": 40, "host": {"cpu_model": "Test CPU", "cpu_threads": 1, "contended": True,
                                    "git_sha": "abcdef0123456789", "git_dirty": False},
             "norms": {"layernorm": {"ratio_vs_layernorm": 1.0, "ratio_ci95": [1.0, 1.0], "median_step_ms": 50.0,
                                     "norm_fwd_ms": 4.0, "norm_bwd_ms": 6.0},
                       "rmsnorm": {"ratio_vs_layernorm": 0.8, "ratio_ci95": [0.75, 0.85],
                                   "norm_ratio_vs_layernorm": 0.5, "norm_ratio_ci95": [0.4, 0.6],
                                   "median_step_ms": 40.0, "norm_fwd_ms": 2.0, "norm_bwd_ms": 3.0},
                       "prmsnorm": {"ratio_vs_layernorm": 0.98, "ratio_ci95": [0.9, 1.05], "median_step_ms": 49.0,
                                    "norm_fwd_ms": 0.0, "norm_bwd_ms": 0.0}}}
    (cifar_tree / "steps").mkdir()
    (cifar_tree / "steps" / "steps.json").write_text(json.dumps(steps))
    assert main(["--runs", str(cifar_tree), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "tables" / "table10_cifar10.md").read_text()
    assert "| RMSNorm | 2 | 30 |" in md and "| 1.25x |" in md  # 1 / 0.8, no uncontrolled mark
    # The time cells are the measurement's, not the runs' clocks: ms / step 40, s / epoch = 40 ms x
    # the runs' steps per epoch, norm ms 2 + 3, share 5 / 40; a measurement without norm time: missing.
    rms_row = next(line for line in md.splitlines() if line.startswith("| RMSNorm |"))
    per_epoch = steps_per_epoch(collect_local([cifar_tree])[0])
    assert f"| {40.0 * per_epoch / 1e3:.1f}† | 40.0† | 5.00† | 12.5† | 1.25x |" in rms_row, rms_row
    assert "| 49.0† | missing | missing | 1.02x |" in md
    assert ("cifar10_cnn time columns (†) and speedup: repro-bench steps on Test CPU, 1 thread(s), contended, "
            "commit abcdef0123, 2026-01-01, 40 rounds, precision not recorded") in md
    csv_rows = read_csv(tmp_path / "out" / "tables" / "table10_cifar10.csv")
    assert csv_rows[("rmsnorm", "")]["step_ms_mean"] == "40.0" and csv_rows[("rmsnorm", "")]["step_ms_n"] == "1"
    assert csv_rows[("rmsnorm", "")]["time_source"] == "repro-bench steps"
    assert "40.0$^\\dagger$" in (tmp_path / "out" / "tables" / "table10_cifar10.tex").read_text()
    lines = [line for line in md.splitlines() if line.startswith("- speed")]
    rms = next(line for line in lines if "RMSNorm vs" in line and "pRMS" not in line)
    assert "step time 1.25x [1.18, 1.33]" in rms and "norm time 2.00x [1.67, 2.50]" in rms
    assert "paired, interleaved steps by repro-bench steps on Test CPU" in rms
    assert rms.endswith("-> step time: faster; norm time: faster")
    # no norm-time ratio measured: the call is on the step alone
    assert next(line for line in lines if "pRMSNorm" in line).endswith(
        "-> step time: inconclusive (the interval reaches into the ±8% step-time drift measured between sessions)")


def test_step_timings_of_another_setting_than_the_runs_are_not_used(tmp_path):
    """A steps.json measured on another model width, precision, batch or pRMSNorm ratio than the
    runs next to it times something else: the tables fall back to the runs' own times and say why."""
    from repro.tables.render import find_step_timings

    root = tmp_path / "runs"
    for norm, partial in (("layernorm", None), ("prmsnorm", 0.125)):
        run = write_run(root, norm, task="cifar10_cnn", norm=norm, seed=1, partial=partial, test={"test/acc": 0.8},
                        config={"model": {"width": 32, "dropout": 0.5}})
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "precision": "bf16"}))
    runs = collect_local([root])

    def timings(**changes):
        setting = {"model": {"width": 32, "dropout": 0.5}, "precision": "bf16", "batch": 100, "partial": None}
        prms = {**setting, "partial": 0.125, **changes}
        entry = {"ratio_vs_layernorm": 1.0, "ratio_ci95": [1.0, 1.0]}
        doc = {"kind": "repro-bench steps", "format": 1, "task": "cifar10_cnn", "created": "2026-01-01T00:00:00",
               "host": {}, "norms": {"layernorm": {**entry, "setting": setting}, "prmsnorm": {**entry, "setting": prms}}}
        (root / "steps.json").write_text(json.dumps(doc))
        warnings = []
        return find_step_timings([root], runs, warnings), warnings

    found, warnings = timings()
    assert set(found["cifar10_cnn"]) == {"layernorm", "prmsnorm"} and not warnings
    # a run of the task in another folder (another study, e.g. a deeper model) is not what it timed
    other = write_run(tmp_path / "other", "wide", task="cifar10_cnn", norm="layernorm", seed=1, test={"test/acc": 0.8},
                      config={"model": {"width": 96, "dropout": 0.5}})
    assert set(find_step_timings([root], runs + collect_local([other.parent]))["cifar10_cnn"]) == {"layernorm", "prmsnorm"}
    for changes, said in (({"model": {"width": 16, "dropout": 0.5}}, "prmsnorm: model.width=16 measured, 32 in prmsnorm"),
                          ({"precision": "fp32"}, "precision fp32 measured, bf16 in prmsnorm"),
                          ({"batch": 50}, "batch 50 measured, 100 in prmsnorm"),
                          ({"partial": 0.0625}, "partial 0.0625 measured, 0.125 in prmsnorm")):
        found, warnings = timings(**changes)
        assert found == {} and len(warnings) == 1 and said in warnings[0], warnings


def test_tables_list_runs_from_other_commits_and_contended_hosts(tmp_path):
    root = tmp_path / "runs"
    for seed, (sha, contended) in enumerate((("aaaa111111", False), ("bbbb222222", True)), 1):
        run = write_run(root, f"ln{seed}", task="cifar10_cnn", norm="layernorm", seed=seed, test={"test/acc": 0.9})
        summary = json.loads((run / "summary.json").read_text())
        summary["environment"].update(git_sha=sha, contended=contended)
        (run / "summary.json").write_text(json.dumps(summary))
    md = to_markdown(table10(collect_local([root])))
    assert "runs from different commits: aaaa111111: ln1; bbbb222222: ln2" in md
    assert "runs on a contended host (other load beyond the idle cores): ln2" in md


def test_a_run_on_the_papers_budget_is_comparable(tmp_path):
    root = tmp_path / "wmt"
    for norm in ("layernorm", "rmsnorm"):
        for seed in (1, 2):
            write_run(root, f"{norm}{seed}", task="wmt14_transformer", norm=norm, seed=seed, steps=300_000,
                      test={"test/newstest2014/bleu": 26.5 + seed / 10, "bleu_signature": "nrefs:1|case:mixed"},
                      config={"data": {"max_tokens": 12500}, "trainer": {"accumulate": 2},
                              "model": {"dim": 512, "encoder_layers": 6, "decoder_layers": 6}})
    table = table4(collect_local([root]))
    quality = [line for line in verdicts(table) if line.startswith("quality")]
    assert quality and not any("not comparable" in line for line in quality), quality
    assert "sacreBLEU signature: `nrefs:1|case:mixed`" in to_markdown(table)


def test_a_table10_run_is_comparable_only_at_the_papers_precision(tmp_path):
    """The paper's CIFAR-10 runs were fp32 (Theano float32 on a 2080 Ti, which has no bf16): the
    same budget under bf16 autocast, or with its precision unrecorded, is not their number."""
    root = tmp_path / "cifar"
    for norm in ("layernorm", "rmsnorm"):
        for seed in (1, 2):
            write_run(root, f"{norm}{seed}", task="cifar10_cnn", norm=norm, seed=seed, steps=100_000, val_size=0,
                      test={"test/acc": 0.9 + seed / 100}, config={"model": {"width": 96}})

    def quality_with(precision):
        for summary_path in root.glob("*/summary.json"):
            summary = json.loads(summary_path.read_text())
            summary["precision"] = precision
            summary_path.write_text(json.dumps(summary))
        return next(line for line in verdicts(table10(collect_local([root]))) if line.startswith("quality"))

    assert "not comparable" not in quality_with("fp32")
    assert quality_with("bf16").endswith("not comparable to the paper's numbers (bf16 autocast (paper: fp32))")
    assert "(precision unknown (paper: fp32))" in quality_with(None)


def test_the_no_norm_row_says_whether_it_trained(tmp_path):
    root = tmp_path / "none"
    write_run(root, "ln", task="multi30k_transformer", norm="layernorm", seed=1, test={"test/t/bleu": 30.0})
    write_run(root, "none1", task="multi30k_transformer", norm="none", seed=1, test={"test/t/bleu": 29.0})
    lines = verdicts(table4(collect_local([root])))
    assert any(line.startswith("no norm, multi30k_transformer: TRAINED here (BLEU 29.00") and "failed to train" in line
               for line in lines), lines
    write_run(root, "none1", task="multi30k_transformer", norm="none", seed=1, test={"test/t/bleu": 0.1})
    lines = verdicts(table4(collect_local([root])))
    assert any("failed to train here too" in line for line in lines), lines


def test_table4_per_test_set_and_missing_cells(tmp_path):
    root = tmp_path / "runs"
    bleu = {"layernorm": [(30.0, 31.0), (30.4, 31.2)], "rmsnorm": [(30.3, 31.5)], "prmsnorm": [(29.0, None)]}
    for norm, per_seed in bleu.items():
        for seed, (b16, b17) in enumerate(per_seed, 1):
            test = {"test/bleu": b16, "test/test2016/bleu": b16}
            if b17 is not None:
                test.update({"test/test2017/bleu": b17})
            write_run(root, f"{norm}{seed}", task="multi30k_transformer", norm=norm, seed=seed, test=test,
                      partial=0.0625 if norm == "prmsnorm" else None, step_ms=(900.0, 100.0, 100.0))
    table = table4(collect_local([root]))
    headers = [c.header for c in table.columns]
    assert headers[:2] == ["test2016 sacreBLEU", "test2017 sacreBLEU"]  # the paper's metric, and only it
    md = to_markdown(table)
    assert "| LayerNorm | 2 | 30 | 30.20 ± 0.28 | 31.10 ± 0.14 | 100.0 ± 0.0* |" in md  # host not recorded uncontended
    prms = next(line for line in md.splitlines() if line.startswith("| pRMSNorm"))
    assert prms.count("missing") == 1  # no test2017 score: shown as missing, not filled in
    assert "26.6" in md and "Tesla V100" in md and "failed" in md  # paper: the no-norm model failed
    quality = [line for line in verdicts(table) if line.startswith("quality")]
    assert any("test2017 sacreBLEU: missing" in line and "pRMSNorm" in line for line in quality)
    assert any("test2016 sacreBLEU: Δ = +0.10" in line and "RMSNorm vs" in line for line in quality)
    assert "sacreBLEU signature: not recorded by 4 of 4 runs" in md
    tex = to_latex(table)
    assert "$\\pm$" in tex and "\\begin{tabular}" in tex and "(p=6.25\\%)" in tex


def test_an_empty_sweep_renders_every_cell_missing(tmp_path):
    root = tmp_path / "empty"
    write_run(root, "ln", task="cifar10_cnn", norm="layernorm", seed=1, status="failed")
    runs = collect_local([root])
    md = to_markdown(table10(runs))
    assert "No runs found for this table" in md and "excluded, crashed" in md
    assert "8.83" in md  # the paper's numbers are still shown
    # every paper row is in the regenerated table, all missing (before, a row needed a run)
    for label in ("None", "BatchNorm", "WeightNorm", "LayerNorm", "RMSNorm", "pRMSNorm (p=12.5%)"):
        assert f"| {label} | 0 | ? | missing | missing | missing | missing | missing | missing |" in md
    only_rms = tmp_path / "rms"
    write_run(only_rms, "rms", task="cifar10_cnn", norm="rmsnorm", seed=1, test={"test/acc": 0.9})
    table = table10(collect_local([only_rms]))
    assert verdicts(table) == ["cifar10_cnn RMSNorm vs LayerNorm: no LayerNorm runs to compare with (missing)"]
    assert "| RMSNorm | 1 | 30 | 10.00 |" in to_markdown(table) and to_markdown(table).count("missing") >= 1
    csv_rows = to_csv(table).splitlines()
    assert len(csv_rows) == 1 + 6  # header + the paper's six rows
    assert next(line for line in csv_rows if line.startswith("cifar10_cnn,rmsnorm,")).endswith(",,training runs")  # no speedup


class FakeRun:
    """The attributes of wandb.apis.public.Run that repro-tables reads."""

    def __init__(self, run_id, norm, seed, acc, group="g1", tags=("cifar10_cnn",), state="finished"):
        self.id, self.name, self.state, self.group, self.tags = run_id, f"run-{run_id}", state, group, list(tags)
        self.path = ["ent", "proj", run_id]
        self.url = f"https://wandb.ai/ent/proj/runs/{run_id}"
        self.config = {"seed": seed, "task": {"name": "cifar10_cnn"}, "norm": {"name": norm, "partial": 0.125},
                       "data": {"batch_size": 100, "val_size": 5000}, "_wandb": {"x": 1}}
        self.summary = {"status": "completed", "task": "cifar10_cnn", "norm": norm, "seed": seed,
                        "partial": 0.125 if norm == "prmsnorm" else None, "test/acc": acc, "step": 20,
                        "_runtime": 3.0}
        self.scans = 0

    def scan_history(self):
        self.scans += 1
        return [{"_step": 10, "train/loss": 1.0, "time/step_ms": 80.0, "lr": 0.1, "_runtime": 1.0},
                {"_step": 20, "train/loss": 0.5, "time/step_ms": 40.0, "val/acc": 0.8, "test/acc": float("nan")}]


class FakeApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return self._runs


def test_history_rows_are_split_like_the_run_store():
    rows = history_to_rows(FakeRun("a", "rmsnorm", 1, 0.9).scan_history())
    assert rows == [
        {"step": 10, "split": "train", "train/loss": 1.0, "time/step_ms": 80.0, "lr": 0.1},
        {"step": 20, "split": "train", "train/loss": 0.5, "time/step_ms": 40.0},
        {"step": 20, "split": "val", "val/acc": 0.8},
        {"step": 20, "split": "test", "test/acc": None},
    ]


def test_wandb_runs_are_cached_as_run_stores_and_rebuild_offline(tmp_path, cifar_tree):
    fake = [FakeRun("a1", "layernorm", 1, 0.90), FakeRun("b2", "rmsnorm", 1, 0.92),
            FakeRun("c3", "rmsnorm", 2, 0.91, group="other", tags=["x"])]
    api = FakeApi(fake)
    cache = tmp_path / "cache"
    dirs = fetch_wandb("ent/proj", cache, group="g1", tags=["cifar10_cnn"], api=api)
    assert api.calls == [("ent/proj", {"group": "g1", "tags": {"$in": ["cifar10_cnn"]}})]
    runs = collect_local(dirs)
    assert {(r.norm, r.seed, r.wandb_id) for r in runs} == {("layernorm", 1, "a1"), ("rmsnorm", 1, "b2"),
                                                           ("rmsnorm", 2, "c3")}
    assert all("_wandb" not in r.config and "_runtime" not in r.summary for r in runs)
    row = next(r for r in table10(runs).rows if r.norm == "layernorm")
    assert row.cells["error"].mean == pytest.approx(10.0) and row.cells["step_ms"].mean == 40.0

    # finished runs are not fetched twice; the cache answers offline and when the API fails
    fetch_wandb("ent/proj", cache, api=api)
    assert all(run.scans == 1 for run in fake)
    offline = fetch_wandb("ent/proj", cache, group="g1", offline=True)
    assert {d.name for d in offline} == {"a1", "b2"}

    class Down:
        def runs(self, *args, **kwargs):
            raise ConnectionError("no network")
    assert {d.name for d in fetch_wandb("ent/proj", cache, tags=["x"], api=Down())} == {"c3"}
    with pytest.raises(RuntimeError, match="--wandb ent/other: W&B unreachable"):
        fetch_wandb("ent/other", cache, api=Down())

    # a local run and its W&B copy count once
    write_run(cifar_tree, "synced", task="cifar10_cnn", norm="layernorm", seed=7, wandb_id="a1",
              test={"test/acc": 0.5})
    both = dedupe(collect_local([cifar_tree]) + runs)
    assert sum(r.wandb_id == "a1" for r in both) == 1
    assert next(r for r in both if r.wandb_id == "a1").seed == 7  # the local one, found first


def test_cli_writes_tables_and_figures(cifar_tree, tmp_path, capsys):
    bench = tmp_path / "bench"
    write_bench(bench / "test-gpu")
    out = tmp_path / "results"
    assert main(["--runs", str(cifar_tree), "--out", str(out), "--bench", str(bench),
                 "--note", "Budget: 30 steps per run", "--note", "table10=Width 16"]) == 0
    printed = capsys.readouterr().out
    assert "8 runs collected" in printed and "Table 10: ConvPool-CNN-C on CIFAR-10: 3 groups" in printed
    for stem in ("table4_transformer", "table10_cifar10"):
        for ext in ("md", "csv", "tex"):
            assert (out / "tables" / f"{stem}.{ext}").stat().st_size > 0
        md = (out / "tables" / f"{stem}.md").read_text()
        assert "**Budget: 30 steps per run**" in md
        assert ("**Width 16**" in md) == (stem == "table10_cifar10")  # a TABLE= note goes to that table only
    for name in ("loss_curves", "val_curves", "norm_share", "kernel_gbps"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_keep_notes_regenerates_a_table_with_the_notes_it_has(cifar_tree, tmp_path):
    """Adding runs and regenerating keeps the notes written before, per table; a table given a
    --note takes that one instead. The notes come back whole, emphasis included."""
    out = tmp_path / "results"
    assert main(["--runs", str(cifar_tree), "--out", str(out), "--note", "table4=Budget: *30* steps",
                 "--note", "table10=Width 16", "--note", "table10=Seed 1 of 3 so far"]) == 0
    assert written_notes(out) == {"table4": ["Budget: *30* steps"], "table10": ["Width 16", "Seed 1 of 3 so far"]}
    assert main(["--runs", str(cifar_tree), "--out", str(out), "--keep-notes", "--note", "table10=Seeds 1-3"]) == 0
    assert written_notes(out) == {"table4": ["Budget: *30* steps"], "table10": ["Seeds 1-3"]}
    assert main(["--runs", str(cifar_tree), "--out", str(out)]) == 0  # without it, notes are what is given
    assert written_notes(out) == {"table4": [], "table10": []}
    assert main(["--runs", str(cifar_tree), "--out", str(tmp_path / "fresh"), "--keep-notes"]) == 0  # nothing to keep
    assert written_notes(tmp_path / "fresh") == {"table4": [], "table10": []}
    md = "# T (regenerated)\n\n**first note**\n\n**second, with *emphasis***\n\n| a |\n|---|\n\n**not a note**\n"
    assert notes_in(md) == ["first note", "second, with *emphasis*"]


def write_bench(device_dir: Path) -> None:
    from repro.bench.report import RECORD_FIELDS

    records = [dict.fromkeys(RECORD_FIELDS) | {"op": op, "label": label, "M": 4096, "N": n, "dtype": "bf16",
                                               "pass": "fwd", "backend": "triton", "status": "ok", "ms": 0.01,
                                               "gbps": g * n / 1024}
               for op, label, g in (("layer_norm", "LayerNorm", 900.0), ("rms_norm", "RMSNorm", 1100.0))
               for n in (256, 1024, 4096)]
    device_dir.mkdir(parents=True)
    (device_dir / "bench.json").write_text(json.dumps({"meta": {"device": "Test GPU", "copy_gbps": 3000.0},
                                                       "records": records}))


@pytest.mark.parametrize("argv, message", [
    ([], "give at least one --runs DIR or --wandb ENTITY/PROJECT"),
    (["--runs", "x", "--note", "table4="], "the note is empty"),
    (["--runs", "x", "--group", "g"], "--group needs --wandb ENTITY/PROJECT"),
    (["--wandb", "noslash"], "--wandb must be ENTITY/PROJECT, got 'noslash'"),
    (["--runs", "/nonexistent/runs"], "--runs /nonexistent/runs: no such directory"),
])
def test_cli_errors_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_report_is_built_offline_with_the_standard_panels():
    pytest.importorskip("wandb_workspaces")
    from wandb_workspaces import expr

    from repro.tables.report import build_report

    report = build_report("ent/proj", group="g1", tags=["cifar10_cnn", "rmsnorm"])
    assert (report.entity, report.project) == ("ent", "proj")
    grids = [b for b in report.blocks if type(b).__name__ == "PanelGrid"]
    plotted = {m for grid in grids for panel in grid.panels for m in (panel.y or [])}
    assert {"train/loss", "val/loss", "val/bleu", "test/acc", "time/norm_share", "time/step_ms",
            "throughput/tokens_per_s"} <= plotted
    runset = grids[0].runsets[0]
    assert runset.groupby == ["config.task.name", "config.norm.name", "config.norm.partial"]
    filters = expr.string_to_filterexpr_list(runset.filters)
    assert [f.key.name for f in filters] == ["Group", "Tags"]
    assert filters[0].value == "g1" and filters[1].value == ["cifar10_cnn", "rmsnorm"]


def test_report_without_wandb_workspaces_is_a_one_line_error(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_workspaces(name, *args, **kwargs):
        if name.startswith("wandb_workspaces"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_workspaces)
    with pytest.raises(SystemExit):
        main(["--wandb", "ent/proj", "--make-report", "--dry-run"])
    assert "--make-report needs wandb-workspaces: pip install 'repro[report]'" in capsys.readouterr().err


def test_seed_curves_average_the_common_steps_and_fall_back_to_the_test_split(tmp_path):
    from repro.tables.figures import EVAL_CURVES, plot_curves, seed_curves

    root = tmp_path / "runs"
    for seed, acc in ((1, 0.5), (2, 0.7)):
        write_run(root, f"rms{seed}", task="cifar10_cnn", norm="rmsnorm", seed=seed, step_ms=(1.0, 1.0, 1.0) + (1.0,) * (seed - 1),
                  val=[(20, {"test/acc": acc}), (40, {"test/acc": acc + 0.1})])
    runs = collect_local([root])
    for run in runs:  # these runs evaluated on the test split only
        for row in run.rows:
            if "test/acc" in row:
                row["split"] = "test"
    steps, mean, low, high = seed_curves(runs, "train/loss", "train")
    assert steps == [10, 20, 30]  # seed 2 logged a 4th interval, seed 1 did not
    assert mean == pytest.approx([2.0 + 0.015, 1.0 + 0.015, 2 / 3 + 0.015]) and low[0] == pytest.approx(2.01)
    assert seed_curves(runs, "test/acc", "test")[1] == pytest.approx([0.6, 0.7])
    assert plot_curves(runs, tmp_path / "eval.png", EVAL_CURVES, "Evaluation").read_bytes()[:4] == b"\x89PNG"
    assert plot_curves(runs, tmp_path / "none.png", (("val", "val/bleu"),), "BLEU") is None


def test_an_offline_wandb_run_and_its_cached_copy_count_once(cifar_jpeg, tmp_path, monkeypatch):  # noqa: F811
    """A real run with the W&B sink offline: its run store carries the W&B run id, so the same run
    fetched later from W&B (here a stand-in with that id) is not counted twice."""
    from repro.train import train
    from train_helpers import smoke_config

    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "runs" / "offline"
    train(smoke_config(cifar_jpeg, "logger=wandb", "logger.mode=offline", "trainer.max_steps=2",
                       "trainer.eval_every=2", "trainer.log_every=1"), run_dir)
    [local] = collect_local([tmp_path / "runs"])
    assert local.wandb_id and list((run_dir / "wandb").glob(f"offline-run-*-{local.wandb_id}"))
    fetched = FakeRun(local.wandb_id, local.norm, local.seed, 0.1)
    dirs = fetch_wandb("ent/proj", tmp_path / "cache", api=FakeApi([fetched]))
    runs = dedupe([local] + collect_local(dirs))
    assert runs == [local]
