"""Translation through the shared trainer and repro-translate: a fixture run logs BLEU and tokens/s,
its checkpoint translates on its own (tokenizer inside), checkpoint averaging; Multi30k (realdata)."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
import torch

from conftest import SHARED_DATA
from repro.cli.translate import average_checkpoints, main as translate_main
from repro.data.translation import read_parallel
from repro.track import read_metrics
from repro.train import ConfigError, train, validate_config
from train_helpers import compose_config, corpus, one_thread  # noqa: F401


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    """A 40-step run of the smoke experiment on the fixture corpus: (run dir, summary)."""
    out = tmp_path_factory.mktemp("translation_run")
    cfg = compose_config(
        "experiment=translation_smoke", f"data.root={corpus}", f"data.tokenizer={out}/spm.model",
        "trainer.max_steps=40", "trainer.eval_every=20", "trainer.log_every=10", "trainer.norm_timing_every=5",
        "optim.lr=0.01", "trainer.deterministic=true", "norm=rmsnorm",
    )
    torch.manual_seed(0)
    return out / "run", train(cfg, out / "run")


def test_run_logs_loss_bleu_tokens_per_second_and_norm_share(run):
    run_dir, summary = run
    rows = read_metrics(run_dir)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"] - 1
    assert all(r["throughput/tokens_per_s"] > 0 and "time/norm_share" in r for r in train_rows)
    assert [r["step"] for r in rows if r["split"] == "val"] == [20, 40]
    test_rows = [r for r in rows if r["split"] == "test"]
    assert test_rows[-1]["test/bleu"] == summary["test/bleu"] == summary["test/test_2016_flickr/bleu"]
    assert summary["test/bleu"] > 2 and summary["best/val/bleu"] >= summary["val/bleu"]
    # the paper's metric: case-sensitive detokenized sacreBLEU, its signature kept with the run
    stored = json.loads((run_dir / "summary.json").read_text())
    assert stored["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert not [k for k in stored if "bleu_tok" in k]
    assert 0 < summary["time/norm_share"] < 1 and summary["throughput/tokens_per_s"] > 0


def test_checkpoint_translates_on_its_own(run, corpus, tmp_path, capsys):
    """repro-translate rebuilds model, tokenizer and decoding settings from the checkpoint alone
    (the tokenizer file is deleted first) and scores the test set exactly as the run did."""
    run_dir, summary = run
    (run_dir.parent / "spm.model").rename(tmp_path / "moved.model")
    try:
        out = tmp_path / "hyp.de"
        translate_main(["--checkpoint", str(run_dir / "checkpoints" / "last.pt"),
                        "--src", str(corpus / "test_2016_flickr.en.gz"), "--ref", str(corpus / "test_2016_flickr.de.gz"),
                        "--out", str(out), "--device", "cpu"])
    finally:
        (tmp_path / "moved.model").rename(run_dir.parent / "spm.model")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"BLEU = {summary['test/bleu']:.2f} ") and "nrefs:1|case:mixed" in line
    hypotheses = out.read_text().splitlines()
    assert len(hypotheses) == 64 and sum(map(bool, hypotheses)) > 32


def test_translate_errors_are_one_line(run, corpus, tmp_path):
    run_dir, _ = run
    ckpt = str(run_dir / "checkpoints" / "last.pt")
    with pytest.raises(SystemExit, match=r"--checkpoint .*nope\.pt does not exist"):
        translate_main(["--checkpoint", str(tmp_path / "nope.pt"), "--src", str(corpus / "val.en.gz")])
    with gzip.open(tmp_path / "short.de.gz", "wt") as f:
        f.write("nur eine Zeile\n")
    with pytest.raises(SystemExit, match=r"val\.en\.gz has 64 lines but .*short\.de\.gz has 1"):
        translate_main(["--checkpoint", ckpt, "--src", str(corpus / "val.en.gz"), "--ref", str(tmp_path / "short.de.gz")])


def test_checkpoint_averaging_is_the_parameter_mean(run, tmp_path):
    run_dir, _ = run
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    other = {**last, "model": {k: v * 3 if torch.is_tensor(v) and v.is_floating_point() else v
                               for k, v in last["model"].items()}}
    torch.save(other, tmp_path / "other.pt")
    averaged = average_checkpoints([run_dir / "checkpoints" / "last.pt", tmp_path / "other.pt"])["model"]
    key = "embed.weight"
    torch.testing.assert_close(averaged[key], last["model"][key] * 2)
    assert averaged["_extra_state"]["vocabulary"] == last["model"]["_extra_state"]["vocabulary"]


@pytest.mark.parametrize("task", ["multi30k_transformer", "wmt14_transformer"])
def test_translation_configs_compose_and_validate(task):
    cfg = compose_config(f"task={task}", "norm=prmsnorm")
    validate_config(cfg)
    assert cfg.model.dim == (256 if task.startswith("multi30k") else 512)
    assert list(cfg.optim.betas) == [0.9, 0.98] and cfg.optim.schedule.name == "inverse_sqrt"
    assert cfg.task.label_smoothing == 0.1 and cfg.decode.beam == 4 and cfg.decode.length_penalty == 0.6


@pytest.mark.parametrize("experiment, model_dim, tokens_per_step", [
    ("wmt14_table4", 512, 25000), ("multi30k_table4_mini", 256, 4096),
])
def test_table4_experiments_sweep_the_papers_norms(experiment, model_dim, tokens_per_step):
    from hydra import compose, initialize_config_dir

    from train_helpers import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [f"experiment={experiment}"], return_hydra_config=True)
    validate_config(cfg)
    assert cfg.hydra.sweeper.params.norm.split(",") == ["none", "layernorm", "rmsnorm", "prmsnorm"]
    assert cfg.norm.partial == 0.0625 and cfg.model.dim == model_dim and not cfg.model.pre_norm
    assert cfg.data.max_tokens * cfg.trainer.accumulate == tokens_per_step


@pytest.mark.parametrize("override, message", [
    ("data.max_tokens=0", r"data\.max_tokens=0 is not allowed: must be an integer >= 1"),
    ("decode.beam=0", r"decode\.beam=0 is not allowed: must be an integer >= 1"),
    ("data.empty_lines=maybe", r"data\.empty_lines='maybe' is not allowed: must be one of error, skip"),
    ("task.label_smoothing=1.0", r"task\.label_smoothing=1\.0 is not allowed: must be a number in \[0, 1\)"),
])
def test_bad_translation_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config("task=multi30k_transformer", override))


@pytest.mark.slow
def test_ddp_two_processes_train_and_evaluate(corpus, tmp_path):
    """torchrun with 2 CPU processes (gloo): token batches split over ranks, one tokenizer."""
    run_dir = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "repro.cli.train",
         "experiment=translation_smoke", f"data.root={corpus}", f"data.tokenizer={tmp_path}/spm.model",
         "trainer.devices=2", f"hydra.run.dir={run_dir}"],
        check=True, timeout=900, capture_output=True,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["step"] == 6
    assert "test/bleu" in summary and summary["throughput/tokens_per_s"] > 0


# ------------------------------------------------------------------------------------- real data
MULTI30K = SHARED_DATA / "multi30k"


@pytest.mark.realdata
def test_multi30k_loads_with_the_documented_sizes():
    sizes = {split: len(read_parallel(MULTI30K, split, "en", "de")) for split in ("train", "val", "test_2016_flickr")}
    assert sizes == {"train": 29000, "val": 1014, "test_2016_flickr": 1000}


@pytest.mark.realdata
def test_multi30k_short_run_loss_falls(tmp_path):
    """30 steps of a tiny model on real Multi30k through the task: the training loss falls."""
    from repro.tasks import build_task_and_model

    cfg = compose_config(
        "task=multi30k_transformer", f"data.root={MULTI30K}", f"data.tokenizer={tmp_path}/spm.model",
        "data.vocab_size=1000", "data.tokenizer_sentences=20000", "data.max_tokens=1500",
        "model.dim=64", "model.ffn=128", "model.encoder_layers=1", "model.decoder_layers=1", "model.dropout=0",
        "seed=0",
    )
    torch.manual_seed(0)
    task, model = build_task_and_model(cfg)
    task.setup(torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    losses = []
    for batch, _ in zip(task.train_batches().iter_epoch(0), range(30)):
        loss, n, _ = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
