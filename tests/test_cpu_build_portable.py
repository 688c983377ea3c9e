"""Builds of the C++ CPU kernels this host cannot run are at least compiled: the portable (DEFAULT)
build for aarch64, and the AVX-512 build on an x86 host without AVX-512.

kernels/cpu/norms.cpp is cross-compiled with aarch64-linux-gnu-g++ against this torch's headers,
with the flags the real DEFAULT build passes (kernels/cpu/__init__.py: compile_flags, plus what
torch.utils.cpp_extension adds itself), to an object file. That compiler has no x86 intrinsics
(immintrin.h does not exist for it), so the compile itself proves the DEFAULT path uses none; the
object is checked to be an aarch64 ELF. Skipped where the cross compiler is missing (Debian /
Ubuntu: `apt-get install g++-aarch64-linux-gnu`; .ci/run installs it). ~40 s on a 2-core x86 VM.

The AVX-512 build is what Intel Xeons (and Zen 4 with AVX-512 enabled) get; on a host whose torch
runs AVX-512 the ordinary tests build and run it, elsewhere it is compiled here with the host's
compiler (~30 s) and its object checked for zmm (512-bit) registers, so that a change that breaks
only the 16-lane vectors cannot go unnoticed on an AVX2 machine.

Only the include paths of torch matter here: norms.cpp includes neither Python.h nor pybind11
(torch/library.h registers its ops), so the x86 Python headers cpp_extension would add are left out.
"""
from __future__ import annotations

import platform
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from repro.kernels import cpu as cpu_kernels

CROSS = "aarch64-linux-gnu-g++"
EM_AARCH64 = 183  # ELF e_machine
STD = "-std=c++20"  # what torch.utils.cpp_extension compiles extensions with (torch 2.14)

needs_cross = pytest.mark.skipif(
    shutil.which(CROSS) is None,
    reason=f"no {CROSS} on PATH (apt-get install g++-aarch64-linux-gnu) to cross-compile the portable build",
)


def compile_command(compiler: list[str], capability: str, *, openmp: bool) -> list[str]:
    from torch.utils import cpp_extension

    name = f"{cpu_kernels.LIBRARY}_{capability.lower()}"
    includes = [arg for path in cpp_extension.include_paths() for arg in ("-isystem", path)]
    return [*compiler, f"-DTORCH_EXTENSION_NAME={name}", "-DTORCH_API_INCLUDE_EXTENSION_H", *includes, "-fPIC", STD,
            *cpu_kernels.compile_flags(capability, openmp=openmp), "-Wno-psabi", str(cpu_kernels._SOURCE)]


def cross_command(*, openmp: bool) -> list[str]:
    return compile_command([CROSS], "DEFAULT", openmp=openmp)


def compile_or_fail(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stderr[-4000:]}"


def test_the_source_needs_no_python_headers():
    source = cpu_kernels._SOURCE.read_text()
    assert not re.search(r"#include\s*[<\"](Python\.h|pybind11/|torch/extension\.h|torch/python\.h)", source)


@needs_cross
def test_the_default_build_compiles_for_aarch64(tmp_path):
    """With the flags of a Linux aarch64 build (OpenMP on), to an object file."""
    obj = tmp_path / "norms.o"
    command = cross_command(openmp=True)
    assert "-fopenmp" in command and not any(f.startswith(("-mavx", "-DCPU_CAPABILITY")) for f in command)
    compile_or_fail([*command, "-c", "-o", str(obj)])
    header = obj.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert header[4] == 2 and header[5] == 1  # 64-bit, little-endian
    assert int.from_bytes(header[16:18], "little") == 1  # a relocatable object
    assert int.from_bytes(header[18:20], "little") == EM_AARCH64


@needs_cross
def test_the_default_build_compiles_for_aarch64_without_openmp():
    """As a compiler without OpenMP builds it (Apple clang on Apple silicon: -fopenmp rejected, the
    kernels single-threaded): the source and torch's headers need no omp.h. Syntax only (no code
    generated), which is what differs."""
    command = cross_command(openmp=False)
    assert "-fopenmp" not in command
    compile_or_fail([*command, "-fsyntax-only"])


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the AVX-512 build is x86's")
@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "AVX512",
                    reason="this host builds and runs the AVX-512 build in the ordinary tests")
@pytest.mark.skipif(cpu_kernels.missing_toolchain() is not None, reason="no C++ compiler (or ninja)")
def test_the_avx512_build_compiles_on_a_host_that_cannot_run_it(tmp_path):
    obj = tmp_path / "norms.o"
    command = compile_command(shlex.split(cpu_kernels.compiler()), "AVX512", openmp=True)
    assert "-mavx512f" in command and "-DCPU_CAPABILITY_AVX512" in command
    compile_or_fail([*command, "-c", "-o", str(obj)])
    if shutil.which("objdump") is None:
        pytest.skip("compiled; no objdump to look at its instructions")
    listing = subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True, timeout=300).stdout
    assert "%zmm" in listing  # at::vec's 16-lane float vectors, not a silent fallback to AVX2


def test_the_standard_is_the_one_the_real_build_uses():
    # where this host has built the kernels, its build file names the flags cpp_extension added
    ninja = cpu_kernels.extensions_root() / f"{cpu_kernels.LIBRARY}_{cpu_kernels.build_capability().lower()}" / "build.ninja"
    if not ninja.exists():
        pytest.skip("the kernels are not built on this host yet")
    cflags = next(line for line in ninja.read_text().splitlines() if line.startswith("cflags"))
    assert f" {STD} " in f"{cflags} " and "-DTORCH_API_INCLUDE_EXTENSION_H" in cflags


def test_the_aarch64_run_script_parses_and_selects_test_files_that_exist():
    """scripts/aarch64_check.sh (the same build run on aarch64 under qemu; not for CI: ~13 min,
    root and the network) must not rot: it parses, and every test file it names is still there."""
    script = Path(__file__).parents[1] / "scripts" / "aarch64_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    named = set(re.findall(r"tests/test_\w+\.py", script.read_text()))
    assert "tests/test_cpu_kernels.py" in named
    assert all((script.parents[1] / path).is_file() for path in named), named
