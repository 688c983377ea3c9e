"""DDP with 2 gloo CPU processes (torch.multiprocessing spawn, torchrun): sharded evaluation gives one
process's numbers while each rank does half the work; SyncBatchNorm conversion; the process-group
timeout; the launchers' configs; averaged checkpoints and resume after kill -9 of one rank. The
NCCL path of SyncBatchNorm (torch's CUDA kernels) is in tests/test_gpu.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from repro.nn import BatchNorm, BatchNorm2d, NormLayer, SyncBatchNorm, SyncBatchNorm2d, spec_of_layer, sync_batch_norm
from repro.cli.translate import average_checkpoints
from repro.tasks import build_task_and_model
from repro.track import NormTimer
from repro.train import checkpoint as ckpt
from repro.train import distributed
from repro.train import train
from repro.util import ConfigError
from train_helpers import cifar_jpeg, compose_config, corpus, free_port, one_thread, smoke_config  # noqa: F401

def _evaluate(cfg, rank: int, world_size: int) -> dict:
    """Evaluate an untrained model of `cfg` (seed 0) on its test split; also count the items this
    rank's model saw and return the translation hypotheses when there are any."""
    torch.manual_seed(0)
    task, model = build_task_and_model(cfg)
    task.setup(torch.device("cpu"), rank, world_size)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, "test")
        out = {"metrics": metrics, "items": sum(seen)}
        if hasattr(task, "encoded"):
            key = next(k for k in task.encoded if k.startswith("test:"))
            out["hyps"] = task.translate(model, task.encoded[key], task.decode.beam)
    return out


def _worker(rank: int, cfgs: dict, out_dir: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(minutes=5))
    try:
        results = {name: _evaluate(cfg, rank, 2) for name, cfg in cfgs.items()}
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


def test_sharded_evaluation_equals_one_process(cifar_jpeg, corpus, tmp_path):
    cfgs = {
        "cifar": smoke_config(cifar_jpeg, "data.eval_batch_size=16"),
        # small eval batches: several of them, so both ranks decode
        "translation": compose_config("experiment=translation_smoke", f"data.root={corpus}",
                                      f"data.tokenizer={tmp_path}/spm.model", "data.eval_max_tokens=128"),
    }
    single = {name: _evaluate(cfg, 0, 1) for name, cfg in cfgs.items()}
    mp.spawn(_worker, args=(cfgs, str(tmp_path), free_port()), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name in cfgs:
        one, two = single[name], [r[name] for r in ranks]
        for part in two:  # every rank returns one process's numbers
            assert part["metrics"].keys() == one["metrics"].keys()
            for key, value in one["metrics"].items():
                assert part["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
        assert 0 < two[0]["items"] < one["items"] and 0 < two[1]["items"] < one["items"], name
    cifar_acc = single["cifar"]["metrics"]["test/acc"]
    assert all(r["cifar"]["metrics"]["test/acc"] == cifar_acc for r in ranks)
    # Translation: the gathered hypotheses are one process's, sentence for sentence, in corpus order.
    assert ranks[0]["translation"]["hyps"] == ranks[1]["translation"]["hyps"] == single["translation"]["hyps"]
    assert "test/bleu" in single["translation"]["metrics"]


def test_sync_batch_norm_keeps_state_and_stays_a_norm_layer():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), BatchNorm2d(4), torch.nn.Sequential(BatchNorm(4)))
    model[1].running_mean.fill_(2.0)
    model[1].weight.data.fill_(3.0)
    model[1].momentum = 0.3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert sync_batch_norm(model) == 2
    assert type(model[1]) is SyncBatchNorm2d and type(model[2][0]) is SyncBatchNorm
    assert isinstance(model[1], torch.nn.SyncBatchNorm) and isinstance(model[1], NormLayer)
    assert spec_of_layer(model[1]).name == spec_of_layer(model[2][0]).name == "batchnorm"
    assert model[1].momentum == 0.3
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert len(NormTimer(model, 1, torch.device("cpu")).layers) == 2
    # evaluation (running statistics) still runs on the CPU, and gives what plain BatchNorm gives
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), BatchNorm2d(4), torch.nn.Sequential(BatchNorm(4)))
    plain.load_state_dict(before)
    model.eval(), plain.eval()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(model[1](x), plain[1](x))
    torch.testing.assert_close(model[2](x[..., :4]), plain[2](x[..., :4]))


def _sync_bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), BatchNorm2d(6), torch.nn.Flatten(2), _Transpose(),
                               BatchNorm(6))


class _Transpose(torch.nn.Module):
    def forward(self, x):  # (N, C, L) -> (N, L, C): features last for the second BatchNorm
        return x.transpose(1, 2)


def _sync_bn_batch():
    return torch.randn(8, 3, 7, 7, generator=torch.Generator().manual_seed(1))


def _sync_bn_worker(rank: int, out_dir: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(minutes=5))
    try:
        model = _sync_bn_model()
        assert sync_batch_norm(model) == 2
        y = model(_sync_bn_batch()[rank * 4:(rank + 1) * 4])
        y.square().sum().backward()
    finally:
        dist.destroy_process_group()
    torch.save({"y": y.detach(), "state": model.state_dict(), "grad": model[0].weight.grad}, f"{out_dir}/rank{rank}.pt")


def test_sync_batchnorm_over_two_gloo_processes_equals_one_process_with_the_whole_batch(tmp_path):
    """The paper's BatchNorm baseline under DDP: 2 ranks x 4 images normalize like 1 process x 8
    (outputs, running statistics, and gradients, whose sum over ranks is the whole batch's)."""
    mp.spawn(_sync_bn_worker, args=(str(tmp_path), free_port()), nprocs=2, join=True)
    model = _sync_bn_model()
    y = model(_sync_bn_batch())
    y.square().sum().backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), atol=1e-5, rtol=1e-5)
    for key, value in model.state_dict().items():  # running mean / var / count: the global batch's
        for r in ranks:
            torch.testing.assert_close(r["state"][key], value, atol=1e-6, rtol=1e-5, msg=key)
    torch.testing.assert_close(ranks[0]["grad"] + ranks[1]["grad"], model[0].weight.grad, atol=1e-4, rtol=1e-4)
    # without the synchronization each rank normalizes its own half: visibly different
    torch.manual_seed(0)
    half = _sync_bn_model()(_sync_bn_batch()[:4])
    assert not torch.allclose(half, ranks[0]["y"], atol=1e-3)


def test_process_group_timeout_comes_from_the_trainer_option(monkeypatch):
    seen = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: seen.update(backend=backend, timeout=timeout))
    distributed.init(distributed.Dist(0, 2, 0), torch.device("cpu"), 90)
    assert seen == {"backend": "gloo", "timeout": timedelta(minutes=90)}
    cfg = compose_config()
    assert cfg.trainer.dist_timeout_min == 60 and cfg.trainer.sync_batchnorm is True


# ------------------------------------------------------------------------------------ launching
def test_slurm_experiment_composes_a_ddp_launcher_config():
    from hydra import compose, initialize_config_dir

    from repro.cli.train import check_sweep, launched_processes
    from repro.train import validate_config
    from train_helpers import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", ["experiment=wmt14_table4_slurm"], return_hydra_config=True)
        bad = compose("config", ["experiment=wmt14_table4_slurm", "hydra.launcher.nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == launcher.tasks_per_node == cfg.trainer.devices == launched_processes(launcher)
    assert cfg.task.name == "wmt14_transformer" and cfg.hydra.sweeper.params.norm == "none,layernorm,rmsnorm,prmsnorm"
    validate_config(cfg, launched_processes(launcher))
    with pytest.raises(ConfigError, match=r"trainer\.devices=8 does not match the 16 process"):
        validate_config(bad, launched_processes(bad.hydra.launcher))
    # what repro-train -m checks for every job before submitting: two nodes need trainer.devices=16
    check_sweep(["-m", "experiment=wmt14_table4_slurm", "hydra.launcher.nodes=2", "trainer.devices=16"], CONF_DIR)
    with pytest.raises(SystemExit, match=r"trainer\.devices=8 does not match the 16 process"):
        check_sweep(["-m", "experiment=wmt14_table4_slurm", "hydra.launcher.nodes=2"], CONF_DIR)
    # the submitit plugin's launcher class is importable (the `slurm` extra is installed)
    from hydra.utils import get_class
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"


def test_submitit_slurm_tasks_get_torchrun_variables(monkeypatch):
    """A task of a 2-node x 8-GPU submitit job: rank, world size and local rank from SLURM, and
    the first node as the rendezvous address, as torchrun would set them."""
    # a private copy of the environment: submitit's helper writes RANK etc., which must not reach other tests
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        os.environ.pop(key, None)
    slurm = dict(SUBMITIT_EXECUTOR="slurm", SLURM_NTASKS="16", SLURM_PROCID="9", SLURM_LOCALID="1",
                 SLURM_JOB_NODELIST="gpu[01-02]", SLURM_JOB_ID="123", SLURM_NNODES="2", SLURM_JOB_NUM_NODES="2",
                 SLURM_NODEID="1")
    os.environ.update(slurm)
    assert distributed.world_from_env() == distributed.Dist(rank=9, world_size=16, local_rank=1)
    assert os.environ["MASTER_ADDR"] == "gpu01" and int(os.environ["MASTER_PORT"]) > 0
    assert "CUDA_VISIBLE_DEVICES" not in os.environ or os.environ["CUDA_VISIBLE_DEVICES"] != "1"


# ------------------------------------------------------------------- checkpoints and resume under DDP
# Plain SGD at a small lr, not Adam: Adam divides by the gradient's own scale, so a near-zero
# gradient whose last bits differ with the batch split (conv reductions on another ISA) moves a
# weight by a whole lr step. SGD on this tiny net amplifies a 1e-8 difference ~10x a step at lr 0.05,
# and still at 0.01 on an AVX2-only host (max |diff| 1.5e-8, 1.4e-7, 3e-7, 5e-6 at steps 1-4, 2.7e-4
# by step 8: over the tolerance); at lr 0.003 it stayed at 1.5e-8 to 3e-8 over all 8 steps there.
# The 1- vs 2-process comparison must not rest on one machine's floating-point path.
DDP_RUN = ["experiment=smoke", "model.dropout=0", "norm=rmsnorm", "optim=sgd", "optim.lr=0.003", "optim.momentum=0",
           "trainer.max_steps=8", "trainer.eval_every=4", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=2",
           "trainer.deterministic=true"]


def _torchrun(cifar_jpeg, run_dir, *, script=("-m", "repro.cli.train"), env=None, port=None):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port or free_port()}", *script,
         *DDP_RUN, f"data.root={cifar_jpeg}", "trainer.devices=2", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def _averaged(run_dir) -> dict:
    return average_checkpoints(sorted((run_dir / "checkpoints").glob("step_*.pt")))["model"]


def test_averaged_checkpoints_of_two_processes_equal_one_process(cifar_jpeg, tmp_path):
    train(smoke_config(cifar_jpeg, *DDP_RUN[1:]), tmp_path / "single")
    result = _torchrun(cifar_jpeg, tmp_path / "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    for run in ("single", "ddp"):
        kept = sorted(p.name for p in (tmp_path / run / "checkpoints").glob("step_*.pt"))
        assert kept == ["step_00000006.pt", "step_00000008.pt"], (run, kept)
    single, ddp = _averaged(tmp_path / "single"), _averaged(tmp_path / "ddp")
    assert single.keys() == ddp.keys()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_kill_9_of_one_rank_then_relaunch_resumes_every_rank(cifar_jpeg, tmp_path):
    """Rank 1 is SIGKILLed inside step 7 (last.pt holds step 6); torchrun stops rank 0; the same
    command again resumes both ranks from last.pt and ends where an uninterrupted run ends."""
    full = _torchrun(cifar_jpeg, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    crashed = _torchrun(cifar_jpeg, tmp_path / "crashed", script=(str(Path(__file__).with_name("ddp_kill_helper.py")),),
                        env={"KILL_RANK": "1", "KILL_AT_CALL": "7"}, port=29642)
    assert crashed.returncode != 0
    assert ckpt.load(tmp_path / "crashed" / "checkpoints" / "last.pt")["step"] == 6
    assert json.loads((tmp_path / "crashed" / "summary.json").read_text())["status"] in ("failed", "running", "interrupted")
    resumed = _torchrun(cifar_jpeg, tmp_path / "crashed", port=29643)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "crashed" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 8 and summary["resumed_from"].endswith("last.pt")
    end, uninterrupted = (ckpt.load(tmp_path / run / "checkpoints" / "last.pt") for run in ("crashed", "full"))
    assert len(end["rng"]) == 2
    for key in uninterrupted["model"]:
        assert torch.equal(end["model"][key], uninterrupted["model"][key]), key
    assert _averaged(tmp_path / "crashed").keys() == _averaged(tmp_path / "full").keys()
