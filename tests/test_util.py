"""repro.util: the one atomic write, mean/std, Markdown table and option schema every layer uses."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import pytest

from repro.util import ConfigError, atomic_write, check_options, markdown_table, mean_std, option


def test_atomic_write_replaces_only_on_success_and_syncs(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "file.txt"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with atomic_write(path) as f:
        f.write("one")
    assert path.read_text() == "one" and len(synced) == 1
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("two, half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "one" and os.listdir(path.parent) == ["file.txt"]


def test_mean_std_is_the_sample_std_and_says_when_there_is_none():
    assert mean_std([]) == (None, None)
    assert mean_std([2.0]) == (2.0, None)
    mean, std = mean_std([1, 2, 3, 4])
    assert mean == 2.5 and math.isclose(std, math.sqrt(5 / 3))


def test_markdown_table():
    assert markdown_table(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]


@dataclass
class Example:
    required: int = option(minimum=0)
    steps: Optional[int] = option(None, minimum=1)
    rate: float = option(0.5, minimum=0, maximum=1, max_strict=True)
    mode: str = option("fast", choices=("fast", "slow"))
    flag: bool = option(True)


@pytest.mark.parametrize("values, message", [
    ({"required": 1, "steps": 0}, "ex.steps=0 is not allowed: must be an integer >= 1 or null"),
    ({"required": 1, "rate": 1.0}, r"ex.rate=1.0 is not allowed: must be a number in [0, 1)"),
    ({"required": 1, "mode": "medium"}, "ex.mode='medium' is not allowed: must be one of fast, slow"),
    ({"required": 1, "flag": "yes"}, "ex.flag='yes' is not allowed: must be true or false"),
    ({"required": True}, "ex.required=True is not allowed: must be an integer >= 0"),
    ({}, "ex.required is missing from the config"),
    ({"required": 1, "colour": 3}, "ex.colour is not an option here: must be one of required, steps, rate, mode, flag"),
])
def test_check_options_names_the_key_and_the_allowed_values(values, message):
    with pytest.raises(ConfigError) as error:
        check_options(values, Example, "ex")
    assert str(error.value) == message


def test_check_options_fills_defaults_and_returns_the_schema():
    assert check_options({"required": 3, "steps": None}, Example, "ex") == Example(required=3)
