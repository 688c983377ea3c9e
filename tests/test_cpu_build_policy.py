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
    # no build lets the compiler pick its own FMA contractions (a row's bits would depend on its
    # row group; scripts/aarch64_check.sh is where that showed)
    for capability in cpu_kernels.CAPABILITIES:
        assert "-ffp-contract=off" in cpu_kernels.compile_flags(capability)


def test_the_source_needs_no_omp_header():
    # at::parallel_for is the only threading: the build without -fopenmp compiles the same source
    source = cpu_kernels._SOURCE.read_text()
    assert "omp.h" not in source and "omp_" not in source and "#pragma omp" not in source
    assert "at::parallel_for" in source


@pytest.fixture
def loads(monkeypatch):
    """cpp_extension.load replaced: records (capability, openmp) per call and fails where told."""
    calls, failing = [], set()

    def load(_cpp_extension, _source, _library, capability, openmp, _without_flags=()):
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


# ------------------------------------------------------------------------------ fallback policy
from repro.kernels import layer_norm, ops, reference, rms_norm  # noqa: E402

COMPILER_OUTPUT = (
    "Error building extension 'repro_cpu_norms_avx2': [1/2] c++ -MMD -MF norms.o.d -O3 -c norms.cpp -o norms.o\n"
    "FAILED: norms.o\n"
    "norms.cpp:9:10: fatal error: ATen/ATen.h: No such file or directory\n"
    "compilation terminated.\n"
    "ninja: build stopped: subcommand failed.\n"
)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No build tried yet in this process (restored after the test), builds cached under tmp_path."""
    monkeypatch.setattr(cpu_kernels, "_ops", None)
    monkeypatch.setattr(cpu_kernels, "_error", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv(cpu_kernels.KERNELS_ENV, raising=False)
    monkeypatch.delenv(cpu_kernels.CAPABILITY_ENV, raising=False)
    return tmp_path


@pytest.fixture
def broken_compiler(fresh, monkeypatch):
    """A compiler on PATH (and ninja) that fails on norms.cpp, OpenMP or not."""
    monkeypatch.setattr(cpu_kernels, "missing_toolchain", lambda: None)
    monkeypatch.setattr(cpu_kernels, "compiler_takes_openmp", lambda: True)

    def load(*_args):
        raise RuntimeError(COMPILER_OUTPUT)

    monkeypatch.setattr(cpu_kernels, "_load", load)
    return fresh


def test_a_compiler_that_fails_is_a_one_line_error_naming_compiler_build_log_and_opt_out(broken_compiler):
    x = torch.randn(4, 32)
    capability = cpu_kernels.build_capability()
    log = cpu_kernels.extensions_root() / f"repro_cpu_norms_{capability.lower()}" / "build.log"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: an error
        for call in (lambda: rms_norm(x), lambda: layer_norm(x), lambda: rms_norm(x, backend="cpu"),
                     cpu_kernels.available):
            with pytest.raises(cpu_kernels.KernelBuildError) as caught:
                call()
            message = str(caught.value)
            assert "\n" not in message
            assert f"failed to build with {cpu_kernels.compiler()} (" in message
            assert f"{capability} build: norms.cpp:9:10: fatal error: ATen/ATen.h: No such file or directory" in message
            assert f"full log: {log};" in message
            assert "backend='torch'" in message and f"{cpu_kernels.KERNELS_ENV}=0" in message
    assert isinstance(caught.value, RuntimeError)
    assert COMPILER_OUTPUT in log.read_text()  # the whole log is there
    # the opt-outs named in the message work
    assert torch.equal(rms_norm(x, backend="torch"), reference.rms_norm(x))


def test_the_opt_out_env_falls_back_silently(broken_compiler, monkeypatch):
    monkeypatch.setenv(cpu_kernels.KERNELS_ENV, "0")
    x = torch.randn(4, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cpu_kernels.available()
        assert ops.resolve_backend("auto", x) == "torch"
        assert torch.equal(layer_norm(x), reference.layer_norm(x))
    with pytest.raises(ValueError, match=r"backend='cpu' is unavailable: .*REPRO_CPU_KERNELS=0"):
        rms_norm(x, backend="cpu")


@pytest.mark.parametrize("missing", ["compiler", "ninja"])
def test_no_compiler_or_no_ninja_falls_back_to_torch_with_one_warning(fresh, monkeypatch, missing):
    if missing == "compiler":
        monkeypatch.setenv("CXX", str(fresh / "no-such-c++"))
        want = r"no C\+\+ compiler: '.*no-such-c\+\+' is not on PATH"
    else:
        monkeypatch.setenv("CXX", "sh")  # any program on PATH: the check is for ninja next
        monkeypatch.setattr(cpu_kernels._cpp_extension(), "is_ninja_available", lambda: False)
        want = "no ninja"
    monkeypatch.setattr(cpu_kernels, "_load", lambda *a: pytest.fail("no build may start"))
    x = torch.randn(4, 32)
    with pytest.warns(RuntimeWarning, match=f"could not be built \\({want}.*falls back to the slower pure-torch") as caught:
        assert ops.resolve_backend("auto", x) == "torch"
        assert torch.equal(rms_norm(x, partial=0.5), reference.rms_norm(x, partial=0.5))
    assert len(caught) == 1
    with pytest.raises(ValueError, match=f"backend='cpu' is unavailable: its kernels cannot be built here \\({want}"):
        rms_norm(x, backend="cpu")


def test_the_first_error_line_of_a_log():
    assert cpu_kernels._first_error(RuntimeError(COMPILER_OUTPUT)).startswith("norms.cpp:9:10: fatal error:")
    assert cpu_kernels._first_error(RuntimeError("Error building extension 'x': ...\nlinker said no\n")) == "linker said no"


def test_a_cache_directory_that_cannot_be_written_is_a_build_error(fresh, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "missing_toolchain", lambda: None)

    def load(*_args):
        raise PermissionError(13, "Permission denied", str(fresh / "repro_cpu_norms_avx2"))

    monkeypatch.setattr(cpu_kernels, "_load", load)
    monkeypatch.setattr(cpu_kernels, "torch_uses_openmp", lambda: False)
    with pytest.raises(cpu_kernels.KernelBuildError, match="Permission denied.*full log: "):
        cpu_kernels.available()


# ------------------------------------------------------------------------------ routing by build
import torch.nn.functional as F  # noqa: E402


@pytest.fixture
def loaded_build(monkeypatch):
    """Pretend the kernels are loaded as the given capability build (nothing is built)."""

    def pretend(capability: str):
        monkeypatch.setattr(cpu_kernels, "available", lambda: True)
        monkeypatch.setattr(cpu_kernels, "loaded_capability", lambda: capability)

    return pretend


def test_auto_sends_layer_norm_to_f_layer_norm_on_the_portable_build(loaded_build):
    loaded_build("DEFAULT")
    x, w, b = torch.randn(6, 40, requires_grad=True), torch.randn(40, requires_grad=True), torch.randn(40, requires_grad=True)
    assert ops.layer_norm_backend("auto", x, w, b) == "native"
    assert ops.resolve_backend("auto", x) == "cpu"  # RMSNorm / pRMSNorm stay on the C++ kernels
    assert ops.layer_norm_backend("cpu", x, w, b) == "cpu"  # asked for by name: the C++ kernels
    assert ops.layer_norm_backend("torch", x, w, b) == "torch"
    y = layer_norm(x, w, b, eps=1e-4)
    assert y.grad_fn.name().startswith("NativeLayerNormBackward")
    assert torch.equal(y, F.layer_norm(x, (40,), w, b, 1e-4))
    torch.testing.assert_close(y, reference.layer_norm(x, w, b, eps=1e-4))
    y.sum().backward()
    assert x.grad is not None and w.grad is not None and b.grad is not None


@pytest.mark.parametrize("x_dtype, w_dtype, b_dtype, native", [
    (torch.float32, None, None, True),
    (torch.bfloat16, torch.float32, torch.float32, True),
    (torch.float16, torch.float16, None, True),
    (torch.float64, torch.float64, torch.float64, True),
    (torch.float32, torch.float64, None, False),  # F.layer_norm refuses these mixes:
    (torch.bfloat16, torch.float32, torch.bfloat16, False),  # the C++ kernels take them
    (torch.float64, torch.float32, None, False),
])
def test_only_parameter_dtypes_f_layer_norm_takes_leave_the_kernels(loaded_build, x_dtype, w_dtype, b_dtype, native):
    loaded_build("DEFAULT")
    x = torch.randn(3, 8, dtype=x_dtype)
    w = None if w_dtype is None else torch.randn(8, dtype=w_dtype)
    b = None if b_dtype is None else torch.randn(8, dtype=b_dtype)
    assert ops.layer_norm_backend("auto", x, w, b) == ("native" if native else "cpu")
    if native:  # and F.layer_norm does take them, with the dtype ours returns
        assert F.layer_norm(x, (8,), w, b).dtype == x_dtype


@pytest.mark.parametrize("x_dtype, w_dtype, b_dtype", [
    (torch.float32, torch.float32, torch.float32),
    (torch.bfloat16, torch.float32, torch.float32),
    (torch.float16, torch.float16, None),
    (torch.float32, None, torch.float32),
    (torch.float64, None, None),
])
def test_per_channel_layer_norm_on_the_portable_build_is_torchs_group_norm(loaded_build, x_dtype, w_dtype, b_dtype):
    """affine_dim=-2 on the route to torch's own kernel: F.group_norm with one group per channel
    is exactly LayerNorm over each (sample, channel) row with a per-channel gain and offset."""
    loaded_build("DEFAULT")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 10, generator=g).to(x_dtype).requires_grad_()
    w = None if w_dtype is None else (1 + 0.5 * torch.randn(3, generator=g)).to(w_dtype).requires_grad_()
    b = None if b_dtype is None else (0.5 * torch.randn(3, generator=g)).to(b_dtype).requires_grad_()
    assert ops.layer_norm_backend("auto", x, w, b) == "native"
    y = layer_norm(x, w, b, eps=1e-4, affine_dim=-2)
    assert y.grad_fn.next_functions[0][0].name().startswith("NativeGroupNormBackward")  # under the reshape
    assert y.dtype == x_dtype and y.shape == x.shape
    leaves = [t for t in (x, w, b) if t is not None]
    refs = [t.detach().double().requires_grad_() for t in leaves]
    ref_args = iter(refs)
    want = reference.layer_norm(next(ref_args), *(next(ref_args) if t is not None else None for t in (w, b)),
                                eps=1e-4, affine_dim=-2)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(x_dtype, 2e-2)
    torch.testing.assert_close(y.double(), want.detach(), atol=tol, rtol=tol)
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(y, leaves, dy.to(x_dtype))
    for a, r in zip(got, torch.autograd.grad(want, refs, dy)):
        torch.testing.assert_close(a.double(), r, atol=10 * tol, rtol=10 * tol)


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_the_x86_vector_builds_keep_layer_norm(loaded_build, capability):
    loaded_build(capability)
    x = torch.randn(3, 8)
    assert ops.layer_norm_backend("auto", x, torch.ones(8), torch.zeros(8)) == "cpu"


def test_without_the_kernels_auto_layer_norm_is_the_torch_backend(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    assert ops.layer_norm_backend("auto", torch.randn(3, 8)) == "torch"


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler here")
def test_the_loaded_capability_is_this_process_build():
    assert cpu_kernels.available()
    assert cpu_kernels.loaded_capability() == cpu_kernels.build_capability()
