"""Fused C++ CPU kernels for LayerNorm, RMSNorm and pRMSNorm (the "cpu" backend of ops.py).

The source (norms.cpp) is compiled with torch.utils.cpp_extension on first use and cached on
disk, keyed by torch version and the vector capability it is built for, so later processes only
load it. Where it cannot be built (no C++ compiler, no ninja, ...), `available()` says so and
warns once; `backend="auto"` then falls back to the pure-torch path.

The capability is the one torch dispatches to on this CPU (AVX512, AVX2, or DEFAULT: at::vec's
portable code, which is what aarch64 and other non-x86 CPUs build). REPRO_CPU_CAPABILITY forces
a lower one, e.g. `REPRO_CPU_CAPABILITY=AVX2` to benchmark the AVX2 build on an AVX-512 machine,
or `DEFAULT` to build and test the portable path (no x86 intrinsics) on x86. Each capability is
its own cached build; one process loads one of them.

Threads come from OpenMP (at::parallel_for in torch's OpenMP builds), so the build passes
-fopenmp; where the compiler cannot build with it (Apple clang) the kernels are built without it,
single-threaded, with a warning.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("norms.cpp")

# Flags for the vector width torch itself dispatches to on this CPU (what at::vec compiles to).
_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}

# Capabilities from lowest to highest; a CPU that runs one runs every one before it.
CAPABILITIES = ("DEFAULT", "AVX2", "AVX512")
CAPABILITY_ENV = "REPRO_CPU_CAPABILITY"

_ops = None  # the loaded torch.ops namespace
_error: Optional[BaseException] = None  # why the build failed, remembered so it is tried once


LIBRARY = "repro_cpu_norms"  # the torch.ops namespace norms.cpp registers (TORCH_LIBRARY)


def _build():
    return build_source(_SOURCE, LIBRARY)


def build_source(source: Path, library: str):
    """Compile one kernel source for this process's capability and return its torch.ops namespace.
    The source registers its ops under `library` (TORCH_LIBRARY(<library>, m)); builds are cached
    per library and capability. Besides norms.cpp, scripts/cpu_kernel_ab.py builds another revision
    of it under another name, to time the two side by side."""
    # importing cpp_extension on a machine without CUDA logs a warning about CUDA_HOME that says
    # nothing about this CPU build
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)

    capability = build_capability()
    openmp = torch_uses_openmp()
    try:
        _load(cpp_extension, source, library, capability, openmp)
    except Exception:
        # Apple clang rejects -fopenmp, and a compiler may lack omp.h / libgomp: then build the
        # kernels without OpenMP (at::parallel_for runs them on one thread) rather than not at all.
        # A compiler that does take OpenMP failed for another reason: that error stands.
        if not openmp or compiler_takes_openmp():
            raise
        warnings.warn(
            f"repro.kernels: {compiler()} cannot build with OpenMP (-fopenmp); the fused CPU kernels "
            "are built without it and run single-threaded",
            RuntimeWarning,
            stacklevel=2,
        )
        _load(cpp_extension, source, library, capability, openmp=False)
    return getattr(torch.ops, library)


def compile_flags(capability: str, openmp: bool = True) -> list[str]:
    """The compiler flags of one capability build (besides cpp_extension's own: -std, -fPIC,
    torch's include paths), with or without OpenMP."""
    # at::parallel_for is a header template: in torch's OpenMP builds (Linux/macOS wheels) its
    # threads are the `#pragma omp parallel` in ATen/ParallelOpenMP.h, compiled into *this*
    # extension, so without -fopenmp the pragma is ignored and the kernels run on one thread
    # (the headers include omp.h only under _OPENMP, and norms.cpp uses no omp_* itself, so
    # the source compiles either way)
    flags = ["-O3"] + (["-fopenmp"] if openmp else [])
    if capability in _CAPABILITY_FLAGS:
        flags += _CAPABILITY_FLAGS[capability]
        flags += [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]
    return flags


def _load(cpp_extension, source: Path, library: str, capability: str, openmp: bool) -> None:
    # the OpenMP-less build is cached under its own name, so the two never overwrite each other
    name = f"{library}_{capability.lower()}" + ("" if openmp else "_noomp")
    build_dir = extensions_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name=name,
        sources=[str(source)],
        extra_cflags=compile_flags(capability, openmp),
        extra_ldflags=["-fopenmp"] if openmp else [],
        build_directory=str(build_dir),
        is_python_module=False,
    )


def torch_uses_openmp() -> bool:
    """Whether at::parallel_for is OpenMP in this torch build (AT_PARALLEL_OPENMP). With torch's
    native thread pool instead, parallel_for runs in libtorch and the extension needs no -fopenmp."""
    return "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def compiler() -> str:
    """The C++ compiler cpp_extension builds with: $CXX, else c++ (cl on Windows)."""
    return os.environ.get("CXX") or ("cl" if os.name == "nt" else "c++")


def compiler_takes_openmp() -> bool:
    """Whether the compiler builds and links a program that includes omp.h with -fopenmp."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "omp_probe.cpp"
        src.write_text("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            done = subprocess.run([*shlex.split(compiler()), "-fopenmp", str(src), "-o", str(Path(tmp) / "probe")],
                                  capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return False
        return done.returncode == 0


    return getattr(torch.ops, library)


def extensions_root() -> Path:
    """Where builds are cached: TORCH_EXTENSIONS_DIR or ~/.cache/repro/torch_extensions, per torch version."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "repro" / "torch_extensions"
    return Path(root) / f"torch-{torch.__version__}"


def build_capability() -> str:
    """The vector capability the kernels are built for: torch's own on this CPU (anything torch
    reports beyond AVX2/AVX512, e.g. on aarch64, builds the portable DEFAULT code), or the lower
    one REPRO_CPU_CAPABILITY asks for."""
    native = torch.backends.cpu.get_cpu_capability()
    native = native if native in CAPABILITIES else "DEFAULT"
    forced = os.environ.get(CAPABILITY_ENV, "").strip().upper()
    if not forced:
        return native
    allowed = CAPABILITIES[: CAPABILITIES.index(native) + 1]
    if forced not in allowed:
        raise ValueError(f"{CAPABILITY_ENV}={forced!r} is not allowed on this CPU: must be one of "
                         f"{', '.join(allowed)} (torch reports {torch.backends.cpu.get_cpu_capability()})")
    return forced


def load():
    """The compiled ops (built on the first call); raises RuntimeError when they cannot be built."""
    global _ops, _error
    if _ops is None and _error is None:
        try:
            _ops = _build()
        except Exception as e:  # noqa: BLE001 - any build failure means "no cpu kernels", never a crash
            _error = e
            warnings.warn(
                f"repro.kernels: the fused CPU kernels could not be built ({build_error()}); "
                "backend='auto' falls back to the slower pure-torch path on CPU",
                RuntimeWarning,
                stacklevel=2,
            )
    if _error is not None:
        raise RuntimeError(f"the fused CPU kernels could not be built: {_error}") from _error
    return _ops


def build_error() -> Optional[str]:
    """Why the kernels could not be built, or None (also when no build was tried yet)."""
    return None if _error is None else f"{type(_error).__name__}: {_last_line(_error)}"


def _last_line(e: BaseException) -> str:
    # compiler failures carry the whole build log; its last line names the failing step
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else repr(e)


# torch.compile calls this eagerly and keeps the answer as a constant, rather than tracing
# into the build (which it cannot)
@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the kernels are built (building them now if not tried yet); warns once on failure."""
    try:
        load()
    except RuntimeError:
        return False
    return True


# ------------------------------------------------------------------ the kernel-backend interface
def rms_norm_forward(x: Tensor, weight, bias, eps: float, k: int, eps_outside: bool):
    return load().rms_norm_forward(x, weight, bias, eps, k, eps_outside)


def rms_norm_backward(dy: Tensor, x: Tensor, weight, rstd: Tensor, eps: float, k: int,
                      eps_outside: bool, has_bias: bool):
    return load().rms_norm_backward(dy, x, weight, rstd, eps, k, eps_outside, has_bias)


def layer_norm_forward(x: Tensor, weight, bias, eps: float):
    return load().layer_norm_forward(x, weight, bias, eps)


def layer_norm_backward(dy: Tensor, x: Tensor, weight, mean: Tensor, rstd: Tensor, has_bias: bool):
    return load().layer_norm_backward(dy, x, weight, mean, rstd, has_bias)


# ------------------------------------------------------------------ the eager route
# Differentiable ops on any-shaped tensors whose autograd node is C++ (norms.cpp): what
# repro.kernels' eager calls on CPU run, with no Python in the backward.
def rms_norm(x: Tensor, weight, bias, eps: float, k: int, eps_outside: bool) -> Tensor:
    return load().rms_norm(x, weight, bias, eps, k, eps_outside)


def layer_norm(x: Tensor, weight, bias, eps: float) -> Tensor:
    return load().layer_norm(x, weight, bias, eps)


@contextlib.contextmanager
def stream_threshold(nbytes: int):
    """Within the block, outputs of at least `nbytes` are written with streaming (non-temporal)
    stores (default: REPRO_CPU_STREAM_BYTES or 32 MiB; see norms.cpp). 0 streams every aligned
    fp32/fp64 output, which is how the tests reach that path on small shapes."""
    previous = load().set_stream_threshold(int(nbytes))
    try:
        yield
    finally:
        load().set_stream_threshold(previous)


@contextlib.contextmanager
def group_rows(rows: int):
    """Within the block, the backward sweeps `rows` rows (1-4) at a time instead of its choice by
    row length (one row for N <= 1024, four above; see norms.cpp). 0 restores the choice. Only
    the order in which dw/db add up depends on it; tests run every size, benchmarks compare them."""
    previous = load().set_group_rows(int(rows))
    try:
        yield
    finally:
        load().set_group_rows(previous)
