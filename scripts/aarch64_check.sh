#!/usr/bin/env bash
# The C++ CPU kernels built and tested on aarch64 -- on an x86 Linux host, under qemu-user.
#
# The portable (DEFAULT) build is what aarch64 (Graviton, Apple silicon under Linux) compiles:
# at::vec's NEON code, no x86 intrinsics. tests/test_cpu_build_portable.py cross-compiles it on
# every CI run; this script goes further and *runs* it: an arm64 Debian root (debootstrap), an
# aarch64 Python with the CPU build of torch from PyPI, the repo installed from this working tree,
# the kernels built there by the repo's own code (native aarch64 g++, emulated), and the kernel
# test files run against them. Correctness only: emulated time says nothing about speed.
#
# Usage (root, on Debian/Ubuntu x86_64; needs deb.debian.org and PyPI):
#   sudo bash scripts/aarch64_check.sh                  # root in /var/tmp/repro-arm64, log in results/aarch64/
#   ROOT=/work/arm64root OUT=/tmp/a64 bash scripts/aarch64_check.sh -m slow tests/test_cpu_kernels.py
# Arguments, if any, replace the default pytest selection below.
# Environment: ROOT (the arm64 root, reused when it exists), OUT (where pytest.log and env.txt go),
# TORCH_SPEC (default torch==2.9.1: the CPU wheel PyPI has for aarch64 and Python 3.11; any
# torch>=2.4 the project supports will do).
# Time on a 2-core AMD EPYC VM: debootstrap 3.5 min, pip 3 min, the kernels' build 3.5 min,
# the default selection 2.5 min (the -m slow grid 3.5 min): ~13 min from nothing.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${ROOT:-/var/tmp/repro-arm64}
OUT=${OUT:-$REPO/results/aarch64}
TORCH_SPEC=${TORCH_SPEC:-torch==2.9.1}
if [ $# -gt 0 ]; then
  SELECTION=("$@")
else
  # everything that exercises the CPU kernels without Triton or the training stack
  SELECTION=(tests/test_cpu_kernels.py tests/test_cpu_build_policy.py tests/test_kernel_bad_tensors.py
             tests/test_nn.py "tests/test_kernel_backends.py" -k "not triton")
fi

[ "$(uname -m)" = x86_64 ] || { echo "aarch64_check: meant for an x86_64 host (on aarch64, run pytest directly)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "aarch64_check: needs root (debootstrap, chroot, binfmt_misc)" >&2; exit 2; }

step() { echo "[aarch64_check $(date +%H:%M:%S)] $*"; }

step "host tools: qemu-user-static, debootstrap, binfmt-support"
for tool in debootstrap qemu-aarch64-static update-binfmts; do
  command -v $tool >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap binfmt-support >/dev/null; break; }
done
# qemu runs aarch64 programs through binfmt_misc, so that everything in the root (pip, g++,
# ninja) is executed as aarch64 without being told
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64

if [ ! -x "$ROOT/usr/bin/python3" ]; then
  step "arm64 Debian bookworm root in $ROOT"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-dev,g++,ca-certificates bookworm "$ROOT" http://deb.debian.org/debian >/dev/null
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# the host's CA bundle, so that pip in the root trusts what the host trusts (a proxy's own CA)
cp "${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}" "$ROOT/etc/ssl/certs/host-ca-bundle.crt"

cleanup() { for d in sys dev proc; do mountpoint -q "$ROOT/$d" && umount "$ROOT/$d"; done; }
trap cleanup EXIT
for d in proc dev sys; do mountpoint -q "$ROOT/$d" || mount --bind "/$d" "$ROOT/$d"; done

in_root() {
  chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/venv/bin:/usr/bin:/bin PYTHONDONTWRITEBYTECODE=1 \
    PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} ${HTTP_PROXY:+HTTP_PROXY=$HTTP_PROXY} ${NO_PROXY:+NO_PROXY=$NO_PROXY} "$@"
}

if ! in_root /venv/bin/python -c "import torch, pytest, hypothesis, ninja, wheel, hydra" 2>/dev/null; then
  step "aarch64 venv: $TORCH_SPEC (CPU build), pytest, hypothesis, ninja, hydra-core (repro.nn registers its config schema)"
  [ -x "$ROOT/venv/bin/python" ] || in_root python3 -m venv /venv
  in_root pip install -q "$TORCH_SPEC" numpy pytest hypothesis pytest-timeout ninja setuptools wheel hydra-core omegaconf
fi

step "the working tree (tracked and untracked, not ignored) -> $ROOT/repo"
rm -rf "$ROOT/repo" && mkdir -p "$ROOT/repo"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -x -C "$ROOT/repo"
in_root pip install -q --no-deps --no-build-isolation -e /repo

mkdir -p "$OUT"
{
  echo "host: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; qemu: $(qemu-aarch64-static --version | head -1)"
  echo "repo: $(cd "$REPO" && git rev-parse HEAD)$(cd "$REPO" && git diff --quiet HEAD || echo ' (with uncommitted changes)')"
  in_root python -c 'import platform, torch; print("guest:", platform.machine(), "python", platform.python_version(), "torch", torch.__version__, "capability", torch.backends.cpu.get_cpu_capability())'
  echo "selection: ${SELECTION[*]}"
} | tee "$OUT/env.txt"

step "the kernels' build (the repo's own, in the guest) and pytest ${SELECTION[*]}"
set +e
in_root /bin/bash -c 'cd /repo && python -c "from repro.kernels import cpu; cpu.load(); print(\"built:\", cpu.build_capability(), cpu.compile_flags(cpu.build_capability()))" && pytest -q -p no:cacheprovider --durations=10 "$@"' \
  _ "${SELECTION[@]}" 2>&1 | tee "$OUT/pytest.log"
rc=${PIPESTATUS[0]}
set -e
step "pytest exit code $rc; log in $OUT/pytest.log"
exit "$rc"
