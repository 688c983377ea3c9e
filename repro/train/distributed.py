"""DDP set-up from torchrun's environment: gloo on CPU, NCCL on GPU; one process per device."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def world_from_env() -> Dist:
    """Rank and world size as torchrun sets them; in a job the submitit launcher started with
    several SLURM tasks (one per GPU), submitit's helper first exports the same variables from
    SLURM's (rank, local rank, world size, the first node as MASTER_ADDR). A plain launch is rank 0 of 1."""
    env = os.environ
    if "RANK" not in env and env.get("SUBMITIT_EXECUTOR") == "slurm" and int(env.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment  # the `slurm` extra

        # every task sees the node's GPUs and picks cuda:LOCAL_RANK (repro.train.run.resolve_device)
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return Dist(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init(world: Dist, device: torch.device, timeout_min: float = 60.0) -> None:
    """`timeout_min` bounds every collective; a rank still inside a long step (e.g. its share of a
    beam-search evaluation) is waited for that long before the job is killed. NCCL's own default
    is 10 minutes, too short for a WMT14 test evaluation."""
    if world.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_min))


def broadcast_buffers(model: torch.nn.Module, world: Dist) -> None:
    """Rank 0's buffers (e.g. BatchNorm running statistics) on every rank, so each rank's share
    of an evaluation runs the model rank 0 saves."""
    if world.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def shutdown(world: Dist) -> None:
    if world.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, world: Dist):
    """Rank 0's `obj` on every rank."""
    if not world.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, world: Dist) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not world.enabled:
        return [obj]
    out = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(value: torch.Tensor, world: Dist) -> torch.Tensor:
    if world.enabled:
        dist.all_reduce(value)
    return value


def barrier(world: Dist) -> None:
    if world.enabled:
        dist.barrier()
