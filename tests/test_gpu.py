"""GPU checks of the benchmark machinery (kernel correctness on CUDA is tests/test_triton_kernels.py).

Run by scripts/device_check.sh with `pytest -m gpu`; skipped where there is no CUDA device.
No test asserts a speed: they check that CUDA timing, the copy bandwidth and every GPU
backend produce well-formed results, and that a backend failing on a shape is recorded.
"""
from __future__ import annotations

import json

import pytest
import torch

from repro.bench.timing import QUICK_PLAN, copy_bandwidth, describe_device, make_timer
from repro.cli.bench import main

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def test_cuda_timer_and_copy_bandwidth():
    info = describe_device(CUDA)
    assert info.cache_bytes > 0 and info.details["sm_count"] > 0
    timer = make_timer(CUDA, QUICK_PLAN)
    x = torch.randn(4096, 4096, device=CUDA)
    t = timer(lambda: x.mul_(1.0))
    assert t.method == "events" and t.reps >= 5 and 0 < t.p20_s <= t.median_s <= t.p80_s
    g = timer(lambda: x.mul_(1.0), graph=True)
    assert g.method == "cudagraph" and 0 < g.p20_s <= g.median_s <= g.p80_s
    gbps, nbytes = copy_bandwidth(info, timer)
    assert gbps > 0 and nbytes >= 2**30  # a buffer far past any L2 of today


def _run(tmp_path, *args):
    out = tmp_path / "bench"
    assert main(["--device", "cuda", "--quick", "--out", str(out), *args]) == 0
    data = json.loads((out / "bench-quick.json").read_text())
    assert (out / "bench-quick.png").stat().st_size > 0 and (out / "bench-quick.csv").stat().st_size > 0
    return data["meta"], data["records"]


def test_every_gpu_backend_is_timed_or_explained(tmp_path):
    meta, records = _run(tmp_path, "--M", "512", "--N", "1024", "--dtypes", "bf16", "--partials", "0.125")
    assert meta["device_type"] == "cuda" and meta["copy_gbps"] > 0
    backends = meta["backends"]
    assert all(backends[b]["available"] for b in ("eager", "native", "compile", "triton")), backends
    assert meta["ours"] == "triton"
    assert not backends["cpu"]["available"]
    if not backends["liger"]["available"]:
        assert backends["liger"]["reason"]
    for r in records:
        expected = "n/a" if r["op"] == "prms_norm" and r["backend"] in ("native", "liger") else "ok"
        assert r["status"] == expected, r
        if expected == "ok":
            assert r["gbps"] > 0 and r["pct_copy"] > 0 and r["pool"] >= 1
            # N = 1024 is small: timed as a CUDA graph (a backend that cannot be captured: per call)
            assert r["timing"] == ("cudagraph" if r["backend"] == "triton" else r["timing"]) in ("cudagraph", "events"), r


def test_large_rows_never_crash_the_run(tmp_path):
    """N = 64K, where Liger's kernels are known to break down: whatever a peer does is recorded."""
    meta, records = _run(tmp_path, "--M", "64", "--N", "65536", "--dtypes", "bf16",
                         "--ops", "rms_norm,layer_norm", "--backends", "native,triton,liger")
    assert {r["status"] for r in records if r["backend"] == "triton"} == {"ok"}
    assert all(r["reason"] for r in records if r["status"] == "failed")


# ------------------------------------------------------------------------ mixed precision and DDP
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_norm_ops_follow_f_layer_norm_under_cuda_autocast(backend, dtype):
    """On CUDA layer_norm is an fp32 autocast op: ours return what F.layer_norm returns, fp32."""
    from repro import kernels

    x = torch.randn(64, 256, device=CUDA).to(dtype)
    w, b = torch.rand(256, device=CUDA) + 0.5, torch.randn(256, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want = torch.nn.functional.layer_norm(x, (256,), w, b)
        ln = kernels.layer_norm(x, w, b, backend=backend)
        rms = kernels.rms_norm(x, w, partial=0.25, backend=backend)
    assert want.dtype == ln.dtype == rms.dtype == torch.float32
    torch.testing.assert_close(ln, want, atol=1e-5, rtol=1e-5)


def _sync_bn_worker(rank: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    from repro.nn import BatchNorm2d, sync_batch_norm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29651")
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), BatchNorm2d(8)).cuda()
    sync_batch_norm(model)
    x = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(1)).cuda()
    y = model(x[rank * 4:(rank + 1) * 4])
    y.square().sum().backward()
    torch.save({"y": y.cpu(), "running_mean": model[1].running_mean.cpu(), "grad": model[0].weight.grad.cpu()},
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm over 2 ranks needs 2 GPUs (NCCL)")
def test_sync_batchnorm_on_two_gpus_equals_one_process_with_the_whole_batch(tmp_path):
    """The paper's BatchNorm baseline under DDP: 2 ranks x 4 images normalize like 1 x 8."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from repro.nn import BatchNorm2d

    mp.spawn(_sync_bn_worker, args=(str(tmp_path),), nprocs=2, join=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), BatchNorm2d(8)).cuda()
    x = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(1)).cuda()
    y = model(x)
    y.square().sum().backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.cpu(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ranks[0]["running_mean"], model[1].running_mean.cpu())
    # each rank's gradient is its half of the whole batch's (DDP would sum them)
    torch.testing.assert_close(ranks[0]["grad"] + ranks[1]["grad"], model[0].weight.grad.cpu(), atol=1e-3, rtol=1e-4)
    assert not dist.is_initialized()
