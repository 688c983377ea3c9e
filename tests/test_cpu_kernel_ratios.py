"""scripts/cpu_kernel_ratios.py's table: one process gives its interval, several give the median
over processes, their range and how many missed the target."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cpu_kernel_ratios.py"


def load_script():
    spec = importlib.util.spec_from_file_location("cpu_kernel_ratios", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def process(ratios: dict, allocator="glibc defaults", capability="AVX2", base_ms=2.0) -> dict:
    cell = {"F.layer_norm": {"median_ms": base_ms}}
    cell |= {op: {"ratio": r, "ci95": [r - 0.02, r + 0.02], "rounds": 40, "median_ms": r * base_ms}
             for op, r in ratios.items()}
    return {"capability": capability, "allocator": allocator, "threads": 2, "shapes": {"4096x512": cell}}


def test_one_process_shows_its_interval_and_flags_a_miss():
    script = load_script()
    table = script.render([process({"rmsnorm": 0.85, "prmsnorm": 0.70, "layernorm": 1.0})])
    row = table.splitlines()[2]
    assert row == "| AVX2 | glibc | 4096x512 | 2.00 | 0.85 [0.83, 0.87] (over) | 0.70 [0.68, 0.72] | 1.00 [0.98, 1.02] |"


def test_several_processes_give_median_range_and_misses_per_build_and_allocator():
    script = load_script()
    runs = [process({"rmsnorm": r, "prmsnorm": 0.7, "layernorm": ln}, base_ms=ms)
            for r, ln, ms in ((0.79, 1.0, 1.0), (0.56, 1.2, 3.0), (0.87, 0.9, 2.0))]
    runs.append(process({"rmsnorm": 0.6, "prmsnorm": 0.6, "layernorm": 0.6}, allocator="kept memory"))
    rows = script.render(runs).splitlines()[2:]
    assert rows[0] == ("| AVX2 | glibc | 4096x512 | 2.00 | 0.79 (0.56-0.87) 1/3 over | 0.70 (0.70-0.70) | "
                       "1.00 (0.90-1.20) 1/3 over |")
    assert rows[1].startswith("| AVX2 | kept | 4096x512 | 2.00 | 0.60 [0.58, 0.62] |")  # its own group, one process
