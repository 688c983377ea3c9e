"""`repro-bench steps` end to end on tiny configs: every norm built and timed in one process, the
JSON the tables read, the figure, the loader and the errors. Times are only checked for shape and
consistency, never for speed."""
from __future__ import annotations

import json

import pytest

from repro.cli.bench import main as bench_main
from repro.track.host import host_label
from repro.track.step_timings import load_step_timings
from train_helpers import cifar_jpeg, corpus, one_thread  # noqa: F401

CIFAR = ["task=cifar10_cnn", "model.width=4", "data.batch_size=8", "data.val_size=0", "data.download=false"]
FAST = ["--steps", "3", "--warmup", "1", "--norm-steps", "2"]


def test_cifar_steps_write_a_table_json_and_figure(cifar_jpeg, tmp_path, capsys):
    out = tmp_path / "steps"
    # an override after the options, as repro-train takes them (argparse alone would refuse it)
    code = bench_main(["steps", *CIFAR, "--norms", "rmsnorm,prmsnorm", f"data.root={cifar_jpeg}", *FAST,
                       "--out", str(out), "logger=none"])
    assert code == 0
    table = capsys.readouterr().out
    assert "step / LN [95% CI]" in table and "prmsnorm" in table and "load average" in table
    doc = json.loads((out / "steps.json").read_text())
    # the head names the kind of machine and the precision the steps ran in
    assert f"cifar10_cnn on {host_label(doc['host'])} (1 threads, wall clock, fp32)" in table.splitlines()[0]

    doc = json.loads((out / "steps.json").read_text())
    assert doc["kind"] == "repro-bench steps" and doc["task"] == "cifar10_cnn" and doc["timer"] == "wall clock"
    assert set(doc["norms"]) == {"layernorm", "rmsnorm", "prmsnorm"}  # the baseline is added
    assert doc["rounds"] == 3 and doc["norm_rounds"] == 2
    assert len(doc["host"]["loadavg_start"]) == len(doc["host"]["loadavg_end"]) == 3
    for name, entry in doc["norms"].items():
        low, high = entry["ratio_ci95"]
        assert low <= entry["ratio_vs_layernorm"] <= high
        assert entry["median_step_ms"] > 0 and entry["norm_fwd_ms"] > 0 and entry["norm_bwd_ms"] > 0
        assert entry["step_ms_p20"] <= entry["median_step_ms"] <= entry["step_ms_p80"]
        assert len(doc["step_ms"][name]) == 3 and len(doc["norm_ms"][name]) == 2
        # the ratio is the median of per-round ratios of the stored times
        ratios = sorted(a / b for a, b in zip(doc["step_ms"][name], doc["step_ms"]["layernorm"]))
        assert entry["ratio_vs_layernorm"] == pytest.approx(ratios[1])
    assert doc["norms"]["layernorm"]["ratio_vs_layernorm"] == 1.0
    assert doc["norms"]["rmsnorm"]["parameters"] == doc["norms"]["prmsnorm"]["parameters"] > 0
    # what each was measured on, for the tables to match against the runs
    setting = doc["norms"]["prmsnorm"]["setting"]
    assert (setting["model"]["width"], setting["precision"], setting["batch"]) == (4, "fp32", 8)
    assert setting["partial"] == 0.0625 and doc["norms"]["rmsnorm"]["setting"]["partial"] is None
    assert (out / "steps.png").stat().st_size > 0

    loaded = load_step_timings(tmp_path)
    assert set(loaded) == {"layernorm", "rmsnorm", "prmsnorm"}
    assert loaded["rmsnorm"]["ratio_ci95"] == doc["norms"]["rmsnorm"]["ratio_ci95"]
    assert loaded["rmsnorm"]["host"]["cpu_model"] == doc["host"]["cpu_model"]


def test_translation_steps_time_a_token_batch(corpus, tmp_path):
    out = tmp_path / "mt"
    code = bench_main(["steps", "experiment=translation_smoke", f"data.root={corpus}",
                       f"data.tokenizer={tmp_path}/spm.model", "--norms", "rmsnorm", *FAST, "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "steps.json").read_text())
    assert doc["task"] == "multi30k_transformer" and set(doc["norms"]) == {"layernorm", "rmsnorm"}
    assert doc["norms"]["rmsnorm"]["norm_bwd_ms"] > 0


def _doc(task, created, ratio):
    return {"kind": "repro-bench steps", "task": task, "created": created, "host": {"cpu_model": "x"},
            "norms": {"layernorm": {"ratio_vs_layernorm": 1.0, "ratio_ci95": [1.0, 1.0]},
                      "rmsnorm": {"ratio_vs_layernorm": ratio, "ratio_ci95": [ratio - 0.1, ratio + 0.1]}}}


def test_loader_takes_the_newest_timing_of_a_task_and_refuses_to_guess_between_tasks(tmp_path):
    for name, doc in {"old": _doc("cifar10_cnn", "2026-01-01T00:00:00+00:00", 0.9),
                      "new": _doc("cifar10_cnn", "2026-02-01T00:00:00+00:00", 0.8),
                      "mt": _doc("multi30k_transformer", "2026-03-01T00:00:00+00:00", 0.7)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "steps.json").write_text(json.dumps(doc))
    assert load_step_timings(tmp_path, task="cifar10_cnn")["rmsnorm"]["ratio_vs_layernorm"] == 0.8
    assert load_step_timings(tmp_path / "old" / "steps.json")["rmsnorm"]["ratio_vs_layernorm"] == 0.9
    with pytest.raises(ValueError, match="several tasks"):
        load_step_timings(tmp_path)
    assert load_step_timings(tmp_path / "nowhere") == {}
    assert load_step_timings(tmp_path, task="wmt14_transformer") == {}


@pytest.mark.parametrize("args, message", [
    (["norm=rmsnorm"], "give the norms with --norms"),
    (["--norms", "rmsnorm,groupnorm"], "'groupnorm'"),
    (["model.nonsense_key=3"], "bad override"),
    (["optim.lr=-1"], "optim.lr=-1"),
    (["--steps", "2"], "--steps must be >= 3"),
])
def test_bad_arguments_are_one_line_errors(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["steps", *CIFAR, "data.root=/nonexistent", *args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 or "usage:" in err
    assert not (tmp_path / "steps.json").exists()


@pytest.mark.parametrize("load, cores, threads, warned", [
    (0.1, 2, 2, False),    # idle: both cores free
    (1.3, 2, 2, True),     # a busy neighbour holds one of the two cores
    (1.3, 2, 1, False),    # ... and one thread fits the free core
    (None, 2, 2, False),   # no load average recorded: nothing to say
    (5.0, 2, 1, False),    # never fewer than one free core: one thread is the floor
])
def test_busy_host_warning_when_the_threads_exceed_the_free_cores(load, cores, threads, warned):
    from repro.bench.steps import busy_host_warning

    host = {"loadavg_start": None if load is None else [load, load, load], "cpu_count": cores}
    message = busy_host_warning(host, threads)
    assert (message is not None) == warned
    if warned:
        assert f"--threads {cores - 1}" in message and f"{threads} threads" in message
