"""Shared test setup: skips `gpu` tests without CUDA and `realdata` tests without ../shared/data.

One place decides both, so every test file only marks what it needs and gets the same reason.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels can only run in Triton's interpreter, and @triton.jit reads
# this flag when the kernel modules are imported -- so it must be set before any test imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(os.environ.get("REPRO_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))


def realdata_skip_reason() -> str | None:
    """Why `realdata` tests cannot run here, or None when the shared data is present."""
    if SHARED_DATA.is_dir():
        return None
    return f"needs the shared data at {SHARED_DATA} (set REPRO_SHARED_DATA to point elsewhere)"


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA device; none is available")
    reason = realdata_skip_reason()
    if reason is not None:
        skips["realdata"] = pytest.mark.skip(reason=reason)
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
