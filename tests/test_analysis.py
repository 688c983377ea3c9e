"""The analyses on small inputs, their numbers checked on constructed cases (a known shift, a known
control-bit layout); tables and the partial-RMS analysis from real short repro-train runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from repro.analysis import control_bits, control_bits_training, invariance, partial_error
from repro.kernels.reference import partial_size
from repro.analysis.cli import run_analyze
from repro.nn import LayerNorm, RMSNorm, build_norm
from repro.tables import collect_local, table10
from repro.tables.render import write_tables
from repro.tasks import CifarClassification
from train_helpers import cifar_jpeg, one_thread, smoke_config  # noqa: F401


@pytest.mark.parametrize("shift", [0.1, 1.0, 3.0])
def test_shift_moves_rmsnorm_by_the_predicted_amount_and_not_layernorm(shift):
    # zero-mean rows of RMS 1; every summed input shifted by c
    a = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(8, 32)
    for norm, expected in (("LayerNorm", 0.0), ("RMSNorm", math.sqrt(2 - 2 / math.sqrt(1 + shift ** 2)))):
        layer = invariance.norms(64)[norm]
        change = invariance.relative_change(layer(a), layer(a + shift))
        assert change == pytest.approx(expected, abs=1e-6), norm


def test_invariance_measurement():
    results = invariance.measure(rows=32, d_in=32, dim=64)
    for case, per_norm in results.items():
        ln, rms = dict(per_norm["LayerNorm"]), dict(per_norm["RMSNorm"])
        if "re-scaling" in case:
            # invariant up to eps/(2 ms) for unit-scale inputs; eps dominates tiny inputs
            assert max(ln[s] for s in ln if s >= 1) < 2e-5 and max(rms[s] for s in rms if s >= 1) < 2e-6
            assert ln[1e-4] > 0.5 and rms[1e-4] > 0.5
        else:
            assert max(ln.values()) < 1e-12
            assert min(rms.values()) > 5e-3 and rms[1.0] > 0.5


def test_control_bit_errors_match_the_closed_form():
    n, m, a = 64, 4, 8.0
    full = math.sqrt((n - m + m * a * a) / n)
    for p in (0.125, 0.25, 0.5):
        k = partial_size(n, p)
        tail = control_bits.control_bit_rows(3, n, m, a, "tail", background="ones")
        assert control_bits.partial_error(tail, p) == pytest.approx(abs(1 - full) / full, rel=1e-6)
        head = control_bits.control_bit_rows(3, n, m, a, "head", background="ones")
        assert control_bits.partial_error(head, p) == pytest.approx(
            abs(math.sqrt((k - m + m * a * a) / k) - full) / full, rel=1e-6)
    rows = control_bits.control_bit_rows(5, n, m, a, "random", background="ones")
    assert ((rows.abs() == a).sum(-1) == m).all()  # m control features in every row
    with pytest.raises(ValueError, match="layout must be one of"):
        control_bits.control_bit_rows(1, n, m, a, "middle")


def test_analysis_commands_write_figures_and_notes(tmp_path):
    assert run_analyze(["all", "--out", str(tmp_path)]) == 0
    for name in ("invariance", "control_bits"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"![{name}]({name}.png)" in (tmp_path / f"{name}.md").read_text()
    note = (tmp_path / "control_bits.md").read_text()
    assert "| 100% | 0.000 | 0.000 | 0.000 | 0.000 |" in note  # p = 1 is RMSNorm: no error
    assert not (tmp_path / "partial_error.md").exists()  # needs --run


def test_partial_error_curves_on_constructed_rows():
    rows = torch.ones(4, 64)
    rows[:, :8] = 4.0  # the prefix holds the large features
    curves = partial_error.error_curves({"layer": rows}, partials=(0.125, 0.5))["layer"]
    full = math.sqrt((8 * 16 + 56) / 64)
    assert dict(curves["prefix"])[0.125] == pytest.approx((4 - full) / full, rel=1e-6)
    assert dict(curves["random subset"])[0.125] < dict(curves["prefix"])[0.125]
    short = partial_error.error_curves({"tiny": torch.ones(2, 4)}, partials=(0.125, 0.5))["tiny"]
    assert [p for p, _ in short["prefix"]] == [0.5]  # k = 0 is skipped


def test_capture_reads_norm_inputs_as_rows():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), build_norm("rmsnorm", 4, conv=True),
                          nn.Flatten(), nn.Linear(4 * 25, 8), LayerNorm(8), RMSNorm(8, partial=0.5))
    x = torch.randn(2, 3, 5, 5)
    captured = partial_error.capture_norm_inputs(model, lambda: model(x))
    assert set(captured) == {"1", "4", "5"}
    assert captured["1"].shape == (2 * 4, 25)  # a row per sample and channel, over H*W
    torch.testing.assert_close(captured["1"], model[0](x).detach().reshape(8, 25))
    assert captured["4"].shape == captured["5"].shape == (2, 8)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, cifar_jpeg):  # noqa: F811
    """Three short repro-train runs on the CIFAR fixture: LayerNorm and pRMSNorm seeds 1 and 2."""
    from repro.train import train

    root = tmp_path_factory.mktemp("real_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPUs are shared: one thread avoids oversubscription stalls
    try:
        for norm, seed in (("layernorm", 1), ("prmsnorm", 1), ("prmsnorm", 2)):
            cfg = smoke_config(cifar_jpeg, f"norm={norm}", f"seed={seed}", "trainer.max_steps=4",
                               "trainer.eval_every=4", "trainer.log_every=2", "trainer.norm_timing_every=2")
            train(cfg, root / f"{norm}_{seed}")
    finally:
        torch.set_num_threads(threads)
    return root


def test_tables_from_real_runs_match_their_files(real_runs, tmp_path):
    runs = collect_local([real_runs])
    assert {(r.norm, r.seed, r.status) for r in runs} == {("layernorm", 1, "completed"), ("prmsnorm", 1, "completed"),
                                                         ("prmsnorm", 2, "completed")}
    row = next(r for r in table10(runs).rows if r.norm == "prmsnorm")
    assert row.partial == 0.0625 and len(row.runs) == 2
    errors = [100 * (1 - json.loads((real_runs / f"prmsnorm_{s}" / "summary.json").read_text())["test/acc"])
              for s in (1, 2)]
    assert row.cells["error"].mean == pytest.approx(sum(errors) / 2)
    step_ms = []
    for s in (1, 2):
        lines = (real_runs / f"prmsnorm_{s}" / "metrics.jsonl").read_text().splitlines()
        train_rows = [json.loads(line) for line in lines if '"split": "train"' in line]
        assert len(train_rows) == 2
        step_ms.append(train_rows[1]["time/step_ms"])  # the first interval is warm-up
    assert row.cells["step_ms"].mean == pytest.approx(sum(step_ms) / 2)
    assert row.cells["norm_ms"].n == 2 and row.cells["norm_ms"].mean > 0
    paths = write_tables(runs, tmp_path)
    md = next(p for p in paths if p.name == "table10_cifar10.md").read_text()
    assert "| pRMSNorm (p=6.25%) | 2 | 4 |" in md and "| LayerNorm | 1 | 4 |" in md


def test_partial_error_on_a_trained_model(real_runs, tmp_path):
    result = partial_error.run(tmp_path, real_runs / "prmsnorm_1")
    assert len(result["layers"]) == 9  # ConvPool-CNN-C has 9 conv layers, each with its norm
    for curves in result["curves"].values():
        assert all(0 <= err < 10 and math.isfinite(err) for _, err in curves["prefix"])
    note = (tmp_path / "partial_error.md").read_text()
    assert "prmsnorm_1" in note and "| `features.1` |" in note
    assert (tmp_path / "partial_error.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        partial_error.run(tmp_path, tmp_path)


def test_partial_error_trains_a_committed_run_store_that_has_no_checkpoint(real_runs, tmp_path, capsys):
    """A committed run store keeps config.yaml, metrics.jsonl and summary.json, not its weights:
    without --train-if-missing the error names the command that rebuilds it; with it, the run is
    trained from its config.yaml into a separate folder and analysed; the store is left as it is."""
    import shutil

    store = tmp_path / "runs" / "prmsnorm_1"
    store.mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        shutil.copy(real_runs / "prmsnorm_1" / name, store / name)
    command = f"repro-tables analyze partial-error --run {store} --train-if-missing"
    with pytest.raises(FileNotFoundError) as error:
        partial_error.run(tmp_path / "out", store)
    assert str(error.value).endswith(f"train it from its config.yaml with: {command}") and "\n" not in str(error.value)
    with pytest.raises(SystemExit):  # the CLI: the same line, as a usage error
        run_analyze(["partial-error", "--run", str(store), "--out", str(tmp_path / "out")])
    assert command in capsys.readouterr().err
    assert not (store / "checkpoints").exists()

    records = {name: (store / name).read_bytes() for name in ("config.yaml", "metrics.jsonl", "summary.json")}
    into = tmp_path / "retrained"
    result = partial_error.run(tmp_path / "out", store, train_if_missing=True, retrain_into=into)
    assert (into / "checkpoints" / "last.pt").is_file() and len(result["layers"]) == 9
    assert not (store / "checkpoints").exists()
    assert {name: (store / name).read_bytes() for name in records} == records
    summary = json.loads((into / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 4 and summary["seed"] == 1
    err = capsys.readouterr().err
    assert "lies outside the repository" in err  # tmp_path is not in the checkout
    note = (tmp_path / "out" / "partial_error.md").read_text()
    assert f"`{store}`" in note and command in note and "outside the repository" in note
    # the weights are there now: the same call analyses without training again
    stamp = (into / "checkpoints" / "last.pt").stat().st_mtime_ns
    partial_error.run(tmp_path / "out", store, train_if_missing=True, retrain_into=into)
    assert (into / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    # weights retrained from another run's config are not taken for this one's
    other = yaml.safe_load((store / "config.yaml").read_text())
    other["seed"] = 2
    (store / "config.yaml").write_text(yaml.safe_dump(other))
    assert partial_error.weights_of(store, into) is None


def test_partial_error_names_a_run_inside_the_repository_relative_to_it():
    from repro.util.paths import REPO_ROOT

    inside = REPO_ROOT / "results" / "runs" / "cifar10_table10_mini" / "cifar10_cnn_prmsnorm_seed1"
    assert partial_error.shown_path(inside) == "results/runs/cifar10_table10_mini/cifar10_cnn_prmsnorm_seed1"
    assert partial_error.rerun_command(inside, "DATA") == (
        "repro-tables analyze partial-error --run results/runs/cifar10_table10_mini/cifar10_cnn_prmsnorm_seed1 "
        "--data-root DATA --train-if-missing")
    assert partial_error.shown_path(Path("/tmp/elsewhere")) == "/tmp/elsewhere"


# ------------------------------------------------------------------ control bits in training
def _clusters(n_train=512, n_test=256, dim=32, classes=4, seed=0):
    """Gaussian clusters: a task an MLP learns in a few dozen steps."""
    gen = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(classes, dim, generator=gen)

    def split(n):
        y = torch.randint(classes, (n,), generator=gen)
        return centers[y] + torch.randn(n, dim, generator=gen), y
    return {"train": split(n_train), "test": split(n_test)}


def test_control_gain_places_the_large_channels():
    assert control_bits_training.control_gain(16, 3, 8.0, "none").eq(1).all()
    head = control_bits_training.control_gain(16, 3, 8.0, "head")
    tail = control_bits_training.control_gain(16, 3, 8.0, "tail")
    assert head[:3].eq(8).all() and head[3:].eq(1).all()
    assert tail[-3:].eq(8).all() and tail[:-3].eq(1).all()
    with pytest.raises(ValueError, match="head and tail"):
        control_bits.control_positions(16, 3, "random")


def test_control_bits_training_errors_follow_the_layout():
    # one step from the same init: the first norm input is the gained Linear output, so the partial
    # estimate is far too high with the large channels in the prefix, too low with them outside
    setup = control_bits_training.Setup(steps=1, hidden=128, controls=4, magnitude=16.0, seeds=(1,))
    data = _clusters()
    err = {layout: control_bits_training.train_one(data, 0.0625, layout, 1, setup)["partial_rel_err"]
           for layout in ("none", "head", "tail")}
    assert err["head"] > 2.0 and 0.5 < err["tail"] < 1.0 and err["none"] < 0.4, err
    assert control_bits_training.train_one(data, 1.0, "tail", 1, setup)["partial_rel_err"] < 1e-6


def test_control_bits_training_learns_and_is_reproducible():
    setup = control_bits_training.Setup(steps=60, hidden=32, controls=2, seeds=(1, 2))
    data = _clusters()
    a = control_bits_training.train_one(data, 0.25, "none", 1, setup)
    b = control_bits_training.train_one(data, 0.25, "none", 1, setup)
    assert a["losses"] == b["losses"]
    assert a["test_acc"] > 0.8 and a["final_loss"] < a["losses"][0] / 2
    results = control_bits_training.measure(data, setup, partials=(0.25, 1.0), layouts=("none", "tail"))
    table = control_bits_training.summarize(results)
    accs = [results["runs"][(1.0, "tail", s)]["test_acc"] for s in (1, 2)]
    mean, std = table[(1.0, "tail")]["test_acc"]
    assert mean == pytest.approx(sum(accs) / 2) and std == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))


def test_control_bits_training_command_writes_its_note(cifar_jpeg, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    assert run_analyze(["control-bits-training", "--data-root", str(cifar_jpeg), "--steps", "2",
                        "--out", str(out)]) == 0
    note = (out / "control_bits_training.md").read_text()
    assert (out / "control_bits_training.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 100% |" in note and "| 6.25% |" in note and "--steps 2" in note
    with pytest.raises(SystemExit):
        run_analyze(["control-bits-training"])  # needs --data-root
