"""Fused C++ CPU kernels for LayerNorm, RMSNorm and pRMSNorm (the "cpu" backend of ops.py).

The source (norms.cpp) is compiled with torch.utils.cpp_extension on first use and cached on
disk, keyed by torch version and the vector capability it is built for, so later processes only
load it. When they are not built:
- no C++ compiler ($CXX, else c++) or no ninja: `available()` is False and warns once;
  `backend="auto"` falls back to the pure-torch path (`backend="cpu"` is a ValueError);
- REPRO_CPU_KERNELS=0: the same, without the warning (the opt-out);
- a compiler that exists but fails to build them: a one-line KernelBuildError (a RuntimeError)
  naming the compiler, the capability build and the full log (build.log in the build directory),
  from `available()` and so from every call that would use them: a broken toolchain is reported,
  not silently traded for a slower path.

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
import re
import shlex
import shutil
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
KERNELS_ENV = "REPRO_CPU_KERNELS"  # "0": do not build them; backend="auto" runs the pure-torch path

_ops = None  # the loaded torch.ops namespace
_capability = ""  # the capability build _ops is (set once loaded)
_error: Optional[BaseException] = None  # why the build failed, remembered so it is tried once


class KernelsUnavailable(RuntimeError):
    """The kernels cannot be built here (no compiler, no ninja) or are switched off: backend="auto"
    falls back to the pure-torch path."""


class KernelBuildError(RuntimeError):
    """A compiler exists but the kernels failed to build: an error, never a silent fallback."""


LIBRARY = "repro_cpu_norms"  # the torch.ops namespace norms.cpp registers (TORCH_LIBRARY)


def _build():
    global _capability
    built = build_source(_SOURCE, LIBRARY)
    _capability = build_capability()
    return built


def build_source(source: Path, library: str, without_flags: tuple[str, ...] = ()):
    """Compile one kernel source for this process's capability and return its torch.ops namespace.
    The source registers its ops under `library` (TORCH_LIBRARY(<library>, m)); builds are cached
    per library and capability. Besides norms.cpp, scripts/cpu_kernel_ab.py builds another revision
    of it under another name, to time the two side by side -- optionally `without_flags` of
    compile_flags(), to time what a flag does.

    Raises KernelsUnavailable without a compiler or ninja, KernelBuildError (one line; the whole
    log in build.log) when the compiler fails."""
    cpp_extension = _cpp_extension()
    missing = missing_toolchain()
    if missing is not None:
        raise KernelsUnavailable(missing)
    capability = build_capability()
    openmp = torch_uses_openmp()
    failures = []  # (attempt, exception), for the log
    try:
        try:
            _load(cpp_extension, source, library, capability, openmp, without_flags)
        except Exception as e:
            failures.append(("with OpenMP" if openmp else "without OpenMP", e))
            # Apple clang rejects -fopenmp, and a compiler may lack omp.h / libgomp: then build the
            # kernels without OpenMP (at::parallel_for runs them on one thread) rather than not at
            # all. A compiler that does take OpenMP failed for another reason: that error stands.
            if not openmp or compiler_takes_openmp():
                raise
            warnings.warn(
                f"repro.kernels: {compiler()} cannot build with OpenMP (-fopenmp); the fused CPU kernels "
                "are built without it and run single-threaded",
                RuntimeWarning,
                stacklevel=2,
            )
            _load(cpp_extension, source, library, capability, False, without_flags)
    except Exception as e:
        if not failures or failures[-1][1] is not e:
            failures.append(("without OpenMP", e))
        log = _write_log(extensions_root() / f"{library}_{capability.lower()}" / "build.log", failures)
        raise KernelBuildError(
            f"repro.kernels: the fused CPU kernels failed to build with {compiler()} "
            f"({shutil.which(_compiler_program()) or 'not found'}), {capability} build: {_first_error(e)}; "
            f"full log: {log}; to run without them pass backend='torch' (config: norm.backend=torch) "
            f"or set {KERNELS_ENV}=0"
        ) from e
    return getattr(torch.ops, library)


def _cpp_extension():
    # importing cpp_extension on a machine without CUDA logs a warning about CUDA_HOME that says
    # nothing about this CPU build
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def missing_toolchain() -> Optional[str]:
    """What is missing to build the kernels (no C++ compiler, no ninja), or None."""
    if shutil.which(_compiler_program()) is None:
        return f"no C++ compiler: {compiler()!r} is not on PATH (install one, or set CXX)"
    if not _cpp_extension().is_ninja_available():
        return "no ninja, which torch.utils.cpp_extension builds with (pip install ninja)"
    return None


def _write_log(path: Path, failures) -> Path:
    text = "\n\n".join(f"===== {compiler()}, attempt {attempt}\n{e}" for attempt, e in failures) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError:  # the build directory itself is the problem: the log goes to a temporary file
        fd, name = tempfile.mkstemp(prefix="repro_cpu_build_", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        path = Path(name)
    return path


def _first_error(e: BaseException) -> str:
    """The line of a build log that says what went wrong: the first compiler `error:` line, else
    the log's last line (cpp_extension's own "Error building extension" header is skipped)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    for line in lines:
        if re.search(r"\berror\b:", line, re.IGNORECASE) and not line.startswith("Error building extension"):
            return line[:300]
    return lines[-1][:300] if lines else f"{type(e).__name__}"


def compile_flags(capability: str, openmp: bool = True) -> list[str]:
    """The compiler flags of one capability build (besides cpp_extension's own: -std, -fPIC,
    torch's include paths), with or without OpenMP."""
    # at::parallel_for is a header template: in torch's OpenMP builds (Linux/macOS wheels) its
    # threads are the `#pragma omp parallel` in ATen/ParallelOpenMP.h, compiled into *this*
    # extension, so without -fopenmp the pragma is ignored and the kernels run on one thread
    # (the headers include omp.h only under _OPENMP, and norms.cpp uses no omp_* itself, so
    # the source compiles either way)
    # -ffp-contract=off: gcc otherwise fuses a*b + c into one FMA wherever the target has FMA
    # (always on aarch64), and decides it per copy of a loop -- the backward's row-group sizes
    # (Rows<1..4>) came out fused differently, so a row's dx bits depended on the group it fell
    # in, i.e. on the batch size (seen on aarch64 under qemu, float64 RMSNorm). at::vec's explicit
    # fmadd stays fused; only the compiler's own choice is switched off.
    flags = ["-O3", "-ffp-contract=off"] + (["-fopenmp"] if openmp else [])
    if capability in _CAPABILITY_FLAGS:
        flags += _CAPABILITY_FLAGS[capability]
        flags += [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]
    return flags


def _load(cpp_extension, source: Path, library: str, capability: str, openmp: bool,
          without_flags: tuple[str, ...] = ()) -> None:
    # the OpenMP-less build is cached under its own name, so the two never overwrite each other
    name = f"{library}_{capability.lower()}" + ("" if openmp else "_noomp")
    build_dir = extensions_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name=name,
        sources=[str(source)],
        extra_cflags=[f for f in compile_flags(capability, openmp) if f not in without_flags],
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


def _compiler_program() -> str:
    # CXX may carry a launcher or flags ("ccache g++"): the first word is what must exist
    words = shlex.split(compiler())
    return words[0] if words else ""


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
    """The compiled ops (built on the first call). Raises KernelsUnavailable where they cannot be
    built here or are switched off, KernelBuildError where the compiler failed (both RuntimeErrors;
    the build is tried once per process)."""
    global _ops, _error
    if _ops is None and _error is None:
        if os.environ.get(KERNELS_ENV, "").strip() == "0":
            _error = KernelsUnavailable(f"switched off by {KERNELS_ENV}=0")
        else:
            try:
                _ops = _build()
            except KernelsUnavailable as e:
                _error = e
                warnings.warn(
                    f"repro.kernels: the fused CPU kernels could not be built ({e}); "
                    "backend='auto' falls back to the slower pure-torch path on CPU",
                    RuntimeWarning,
                    stacklevel=2,
                )
            except KernelBuildError as e:
                _error = e
            except Exception as e:  # noqa: BLE001 - anything else on the way (a cache directory that
                # cannot be written, ...) is a failure to build, reported the same way
                _error = KernelBuildError(
                    f"repro.kernels: the fused CPU kernels failed to build ({type(e).__name__}: "
                    f"{_first_error(e)}); to run without them pass backend='torch' or set {KERNELS_ENV}=0")
                _error.__cause__ = e
    if _error is not None:
        # a fresh exception each time (the cause keeps the original), of the same kind
        raise type(_error)(str(_error)) from _error.__cause__
    return _ops


def build_error() -> Optional[str]:
    """Why the kernels are not built, or None (also when no build was tried yet)."""
    return None if _error is None else str(_error)


# torch.compile calls this eagerly and keeps the answer as a constant, rather than tracing
# into the build (which it cannot)
@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the kernels are built (building them now if not tried yet). False, with one warning,
    where they cannot be built here; raises KernelBuildError where the compiler failed."""
    try:
        load()
    except KernelsUnavailable:
        return False
    return True


@torch.compiler.assume_constant_result
def loaded_capability() -> str:
    """The capability build this process loaded (DEFAULT, AVX2, AVX512), or "" when none is loaded
    (not tried yet, or not built). ops.py routes LayerNorm by it."""
    return _capability if _ops is not None else ""


# ------------------------------------------------------------------ the kernel-backend interface
def rms_norm_forward(x: Tensor, weight, bias, eps: float, k: int, eps_outside: bool, channels: int = 0):
    return load().rms_norm_forward(x, weight, bias, eps, k, eps_outside, channels)


def rms_norm_backward(dy: Tensor, x: Tensor, weight, rstd: Tensor, eps: float, k: int,
                      eps_outside: bool, has_bias: bool, channels: int = 0):
    return load().rms_norm_backward(dy, x, weight, rstd, eps, k, eps_outside, has_bias, channels)


def layer_norm_forward(x: Tensor, weight, bias, eps: float, channels: int = 0):
    return load().layer_norm_forward(x, weight, bias, eps, channels)


def layer_norm_backward(dy: Tensor, x: Tensor, weight, mean: Tensor, rstd: Tensor, has_bias: bool,
                        channels: int = 0):
    return load().layer_norm_backward(dy, x, weight, mean, rstd, has_bias, channels)


# ------------------------------------------------------------------ the eager route
# Differentiable ops on any-shaped tensors whose autograd node is C++ (norms.cpp): what
# repro.kernels' eager calls on CPU run, with no Python in the backward.
def rms_norm(x: Tensor, weight, bias, eps: float, k: int, eps_outside: bool, channels: int = 0) -> Tensor:
    return load().rms_norm(x, weight, bias, eps, k, eps_outside, channels)


def layer_norm(x: Tensor, weight, bias, eps: float, channels: int = 0) -> Tensor:
    return load().layer_norm(x, weight, bias, eps, channels)


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
