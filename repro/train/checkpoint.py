"""Checkpoints: atomic writes and the RNG states that make a resumed run continue bit-exactly."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from repro.util import atomic_write


def save_atomic(state: dict, path: Path) -> None:
    """A crash mid-write leaves the previous checkpoint intact, never a truncated one."""
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load(path: Path) -> dict:
    # weights_only=False: our own checkpoints hold RNG states (numpy arrays, python tuples).
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
