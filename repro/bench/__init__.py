"""Kernel benchmark behind `repro-bench`: LayerNorm, RMSNorm and pRMSNorm, forward and
backward, for every backend the device has (see backends.py), with honest timing (timing.py),
a byte model for GB/s (suite.py), and table / JSON / CSV / PNG output (report.py)."""
from .backends import BACKEND_REGISTRY, OP_FAMILIES, PARTIALS, Op, expand_ops
from .report import render_ln_summary, render_table, write_results
from .runner import BenchConfig, run_benchmark
from .suite import DTYPES, PASSES, Shape, bytes_moved, custom_grid, default_grid

__all__ = [
    "BACKEND_REGISTRY", "BenchConfig", "DTYPES", "OP_FAMILIES", "PARTIALS", "PASSES", "Op", "Shape",
    "bytes_moved", "custom_grid", "default_grid", "expand_ops", "render_ln_summary", "render_table",
    "run_benchmark", "write_results",
]
