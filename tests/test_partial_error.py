"""The committed partial-error note and the weights it reads.

results/analysis/partial_error.md is made from a committed weights-only copy of a committed
Table 10 run (results/analysis/checkpoints/, its sha256 in the note). These tests check that file
(its hash, its contents, that it fits the run's model) and, with the shared data, recompute the
note's whole table from it, so a change in the weights, the data pipeline or the analysis that
moves any number fails here. Also: weights-only copies of a checkpoint, and --weights/--save-weights.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from repro.analysis import partial_error
from repro.analysis.cli import run_analyze
from repro.util.paths import REPO_ROOT

from conftest import SHARED_DATA

RUN = REPO_ROOT / partial_error.COMMITTED_RUN
WEIGHTS = REPO_ROOT / partial_error.COMMITTED_WEIGHTS
NOTE = REPO_ROOT / "results" / "analysis" / "partial_error.md"
SHA256 = "f76dfec7d483dec629c961e1baf9c4d88245890af657969b85c3a070a85dccc9"


def table_of(note: str) -> dict:
    """{layer: [cells after N]} of a partial-error note's table ("n/a" kept as None)."""
    rows = {}
    for line in note.splitlines():
        match = re.match(r"^\| `([^`]+)` \| (\d+) \| (.*) \|$", line)
        if match:
            rows[match[1]] = [None if c.strip() == "n/a" else float(c) for c in match[3].split("|")]
    return rows


def test_the_committed_weights_are_the_ones_the_note_names():
    assert partial_error.sha256_of(WEIGHTS) == SHA256
    note = NOTE.read_text()
    assert f"sha256 `{SHA256}`" in note
    command = (f"repro-tables analyze partial-error --run {partial_error.COMMITTED_RUN} "
               f"--weights {partial_error.COMMITTED_WEIGHTS} --data-root ../shared/data/cifar10-jpg")
    assert f"Made by `{command}`" in note
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)  # no pickled objects
    assert set(state) == {"model", "step", "epoch", "run"} and state["run"] == partial_error.COMMITTED_RUN
    assert all(t.dtype == torch.float32 for t in state["model"].values())
    summary = json.loads((RUN / "summary.json").read_text())
    assert state["step"] == summary["step"] == 10000 and summary["status"] == "completed"
    assert f"final step 10000 (its summary.json: test accuracy {summary['test/acc'] * 100:.2f} %" in note
    # they fit the model the run's config.yaml builds, every tensor, no extra ones
    from omegaconf import OmegaConf

    from repro.tasks import build_task_and_model

    _, model = build_task_and_model(OmegaConf.load(RUN / "config.yaml"))
    model.load_state_dict(state["model"], strict=True)
    assert sum(t.numel() for t in state["model"].values()) == summary["parameters"]


@pytest.mark.realdata
def test_the_committed_note_is_recomputed_from_the_committed_weights(tmp_path):
    """The whole table, from the committed weights and the shared data, within rounding of the
    committed note's three decimals (plus 1e-4 for float differences between machines)."""
    result = partial_error.run(tmp_path, RUN, str(SHARED_DATA / "cifar10-jpg"), weights=WEIGHTS)
    assert result["sha256"] == SHA256
    committed, fresh = table_of(NOTE.read_text()), table_of((tmp_path / "partial_error.md").read_text())
    assert len(committed) == 10 and set(fresh) == set(committed)
    # one number straight from the curves: features.1's prefix error at the model's p = 12.5 %
    assert dict(result["curves"]["features.1"]["prefix"])[0.125] == pytest.approx(committed["features.1"][1],
                                                                                 abs=5e-4 + 1e-4)
    for layer, cells in committed.items():
        for got, want in zip(fresh[layer], cells):
            assert (got is None) == (want is None), layer
            if want is not None:
                assert got == pytest.approx(want, abs=5e-4 + 1e-4), (layer, got, want)


def test_weights_only_copy_of_a_checkpoint(tmp_path):
    """save_weights keeps the model's state (fp32) and the step, drops the optimizer and the RNG
    states; load_weights reads both kinds of file; --weights and --save-weights exclude each other."""
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    checkpoint = {"model": {k: v.to(torch.bfloat16) if k == "0.weight" else v for k, v in model.state_dict().items()},
                  "optimizer": {"state": {0: {"exp_avg": torch.ones(3, 4)}}}, "step": 7, "epoch": 1,
                  "rng": [{"python": (3, (1, 2), None)}]}
    src, dest = tmp_path / "last.pt", tmp_path / "out" / "weights.pt"
    torch.save(checkpoint, src)
    partial_error.save_weights(src, dest)
    state = torch.load(dest, map_location="cpu", weights_only=True)
    assert set(state) == {"model", "step", "epoch", "run"} and state["step"] == 7
    assert set(state["model"]) == set(model.state_dict())
    assert all(t.dtype == torch.float32 for t in state["model"].values())
    torch.testing.assert_close(state["model"]["0.weight"], checkpoint["model"]["0.weight"].float())
    assert partial_error.load_weights(src)["step"] == 7  # a full checkpoint: the trainer's loader
    torch.save(model.state_dict(), tmp_path / "plain.pt")  # a bare state_dict
    assert set(partial_error.load_weights(tmp_path / "plain.pt")["model"]) == set(model.state_dict())
    with pytest.raises(SystemExit):
        run_analyze(["partial-error", "--run", str(tmp_path), "--weights", str(dest), "--save-weights",
                     str(tmp_path / "x.pt"), "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="--weights .*: no such file"):
        (tmp_path / "config.yaml").write_text("seed: 1\n")
        partial_error.load_trained(tmp_path, weights=tmp_path / "missing.pt")
