"""Evaluation sharded over the processes of a DDP run: each rank scores or decodes its share of a
split, and the results are gathered in corpus order, so 2 processes give 1 process's numbers.

With one process (or no process group) every helper is the identity, so a task's evaluation code
is the same in both cases.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_share(items: Sequence[T]) -> list[T]:
    """This rank's items: every world_size-th one from its rank on (batches sorted by length then
    spread evenly, so no rank gets all the long ones)."""
    rank, world_size = _world()
    return list(items[rank::world_size])


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `values` over all ranks (float64 keeps counts exact)."""
    if _world()[1] > 1:
        dist.all_reduce(values)
    return values


def gather_in_order(pieces: dict[int, T], total: int) -> list[T]:
    """A list of `total` items from every rank's {index: item}, indices covering 0..total-1."""
    merged: dict[int, T] = {}
    if _world()[1] > 1:
        every = [None] * _world()[1]
        dist.all_gather_object(every, pieces)
        for part in every:
            merged.update(part)
    else:
        merged = dict(pieces)
    if len(merged) != total:
        raise RuntimeError(f"sharded evaluation gathered {len(merged)} items of {total}")
    return [merged[i] for i in range(total)]
