"""How the C++ CPU kernels are built and when backend="auto" uses them (kernels/cpu/__init__.py,
kernels/ops.py): the OpenMP retry, the fallback policy, the LayerNorm routing on the portable build.

Everything here monkeypatches the build (no broken compiler is needed, nothing is compiled),
except the OpenMP probe, which runs the real compiler on a two-line program.
"""
from __future__ import annotations

import shutil
import stat
import warnings
from pathlib import Path

import pytest
import torch

from repro.kernels import cpu as cpu_kernels

HAVE_COMPILER = shutil.which(cpu_kernels.compiler()) is not None


# ------------------------------------------------------------------------------ OpenMP
def test_compile_flags_per_capability_and_openmp():
    default = cpu_kernels.compile_flags("DEFAULT")
    assert "-fopenmp" in default and not any(f.startswith("-m") or "CPU_CAPABILITY" in f for f in default)
    assert "-fopenmp" not in cpu_kernels.compile_flags("DEFAULT", openmp=False)
    avx2 = cpu_kernels.compile_flags("AVX2", openmp=False)
    assert "-mavx2" in avx2 and "-DCPU_CAPABILITY_AVX2" in avx2 and "-fopenmp" not in avx2


def test_the_source_needs_no_omp_header():
    # at::parallel_for is the only threading: the build without -fopenmp compiles the same source
    source = cpu_kernels._SOURCE.read_text()
    assert "omp.h" not in source and "omp_" not in source and "#pragma omp" not in source
    assert "at::parallel_for" in source


@pytest.fixture
def loads(monkeypatch):
    """cpp_extension.load replaced: records (capability, openmp) per call and fails where told."""
    calls, failing = [], set()

    def load(_cpp_extension, _source, _library, capability, openmp):
        calls.append((capability, openmp))
        if openmp in failing:
            raise RuntimeError(f"Error building extension 'x'{' with OpenMP' if openmp else ''}")

    monkeypatch.setattr(cpu_kernels, "_load", load)
    monkeypatch.setattr(cpu_kernels, "torch_uses_openmp", lambda: True)
    monkeypatch.setenv(cpu_kernels.CAPABILITY_ENV, "DEFAULT")
    return calls, failing


def test_a_compiler_without_openmp_builds_single_threaded_with_a_warning(loads, monkeypatch):
    calls, failing = loads
    failing.add(True)
    monkeypatch.setattr(cpu_kernels, "compiler_takes_openmp", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"cannot build with OpenMP \(-fopenmp\); .* single-threaded"):
        cpu_kernels.build_source(Path("norms.cpp"), "repro_test_omp")
    assert calls == [("DEFAULT", True), ("DEFAULT", False)]


def test_a_failure_with_a_compiler_that_takes_openmp_is_not_retried(loads, monkeypatch):
    calls, failing = loads
    failing.update({True, False})
    monkeypatch.setattr(cpu_kernels, "compiler_takes_openmp", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="with OpenMP"):
            cpu_kernels.build_source(Path("norms.cpp"), "repro_test_omp")
    assert calls == [("DEFAULT", True)]


def test_torch_without_openmp_builds_without_it(loads, monkeypatch):
    calls, _ = loads
    monkeypatch.setattr(cpu_kernels, "torch_uses_openmp", lambda: False)
    cpu_kernels.build_source(Path("norms.cpp"), "repro_test_omp")
    assert calls == [("DEFAULT", False)]


def test_this_torch_threads_with_openmp():
    # the pinned Linux wheels: at::parallel_for is OpenMP, so the build passes -fopenmp
    assert cpu_kernels.torch_uses_openmp() == ("OpenMP" in torch.__config__.parallel_info())


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler here")
def test_openmp_probe_tells_a_compiler_that_rejects_it(tmp_path, monkeypatch):
    assert cpu_kernels.compiler_takes_openmp()  # g++ / clang++ with libgomp / libomp
    # a stand-in for Apple clang: the same compiler, but -fopenmp is an error
    fake = tmp_path / "apple-clang++"
    fake.write_text(f'#!/bin/sh\nfor a; do [ "$a" = -fopenmp ] && {{ echo "clang: error: unsupported option '
                    f"'-fopenmp'\" >&2; exit 1; }}; done\nexec {shutil.which(cpu_kernels.compiler())} \"$@\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CXX", str(fake))
    assert cpu_kernels.compiler() == str(fake)
    assert not cpu_kernels.compiler_takes_openmp()
