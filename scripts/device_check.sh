#!/usr/bin/env bash
# Device check on a machine with an NVIDIA GPU, in about 5 minutes:
#   1. the environment (nvidia-smi, Python, torch, triton, liger-kernel)     -> $OUT/env.txt
#   2. pytest -m gpu (kernel grids on CUDA, large shapes, compile / CUDA graphs, bench on CUDA)
#                                                       -> $OUT/pytest-gpu.log, $OUT/pytest-gpu.xml
#   3. repro-bench on the standard GPU grid             -> $OUT/bench.log, $OUT/bench/bench.{json,csv,png}
#   and the exit code and duration of each step         -> $OUT/summary.txt
# (8 files: the most a device run of this workplace returns.)
#
# Usage, from anywhere:  OUT=results/device scripts/device_check.sh
#
# Assumptions, checked in step 1: the machine's Python (PYTHON, default python3) already has a
# CUDA build of torch and triton -- nothing can be installed from the network there. The repo is
# installed from this tree with `pip install --no-deps --no-build-isolation -e .` (setuptools and
# wheel must be present; the bench and the GPU tests need no other dependency). Wheels found in
# WHEELS (default .whl/) are installed first, without the network: that is how an optional peer
# such as Liger-Kernel gets there (`pip download --no-deps liger-kernel -d .whl` on a machine with
# PyPI, then carry .whl). Without it the bench reports Liger as unavailable and goes on.
# A copied tree without .git can name its commit in REPRO_GIT_SHA for the bench's metadata.
#
# Time boxes (seconds, override by environment): TOTAL_S=290 for the whole script,
# SETUP_TIMEOUT_S=120, PYTEST_TIMEOUT_S=90, and BENCH_BUDGET_S, by default what is left of
# TOTAL_S minus 60 s of margin: the bench starts no new case once that much of its run has
# passed and writes what it has (a case already running may overrun it; at BENCH_BUDGET_S+40
# the bench is stopped with SIGTERM and still writes). The grid is ordered so that a cut run still spans N = 512..256K.
# A failing step does not stop the next one; the exit code is the first failing step's.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-results/device}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
TOTAL_S=${TOTAL_S:-290}
SETUP_TIMEOUT_S=${SETUP_TIMEOUT_S:-120}
PYTEST_TIMEOUT_S=${PYTEST_TIMEOUT_S:-90}
mkdir -p "$OUT/bench"
export PYTHONUNBUFFERED=1
status=0

step() {  # step NAME LOGFILE COMMAND...: run, time, log, and record the exit code
    local name=$1 log=$2 start=$SECONDS rc
    shift 2
    echo "== $name: $*" | tee -a "$log"
    "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
    return "$rc"
}

: > "$OUT/summary.txt"
: > "$OUT/env.txt"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -a)"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo "${REPRO_GIT_SHA:-unknown (no .git; set REPRO_GIT_SHA)}")"
    echo "cpus: $(nproc)"
    nvidia-smi || echo "nvidia-smi: not found"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
        --format=csv 2>/dev/null
} >> "$OUT/env.txt" 2>&1

if ! "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" >> "$OUT/env.txt" 2>&1; then
    echo "device_check: $PYTHON has no CUDA-enabled torch (see $OUT/env.txt); nothing to check" | tee -a "$OUT/summary.txt"
    exit 1
fi

if compgen -G "$WHEELS/*.whl" > /dev/null; then
    step "wheels" "$OUT/env.txt" timeout "$SETUP_TIMEOUT_S" \
        "$PYTHON" -m pip install -q --no-index --no-deps --no-cache-dir "$WHEELS"/*.whl
fi
# Editable, so the tests and the bench run this very tree; where the image's setuptools cannot
# build an editable install, a plain copy of the tree does as well.
if ! timeout "$SETUP_TIMEOUT_S" "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-cache-dir \
        -e . >> "$OUT/env.txt" 2>&1; then
    echo "editable install failed (see env.txt); installing a copy" | tee -a "$OUT/summary.txt"
    step "install" "$OUT/env.txt" timeout "$SETUP_TIMEOUT_S" \
        "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-cache-dir . || exit "$status"
fi
"$PYTHON" - >> "$OUT/env.txt" 2>&1 <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
for dist in ("triton", "liger-kernel", "pytest", "pytest-timeout"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "not installed")
p = torch.cuda.get_device_properties(0)
print(f"device {p.name}: {p.multi_processor_count} SMs, {p.L2_cache_size / 2**20:.0f} MiB L2, "
      f"{p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
import repro.kernels
print("repro.kernels backends:", repro.kernels.BACKENDS)
EOF

# Only the files that mark GPU tests: the others may import packages the image lacks (hydra,
# wandb, ...), and their collection errors would say nothing about the GPU.
gpu_tests=$(grep -lE "mark\.gpu" tests/test_*.py | tr '\n' ' ')
step "pytest-gpu" "$OUT/pytest-gpu.log" timeout -k 10 "$PYTEST_TIMEOUT_S" \
    "$PYTHON" -m pytest -m gpu -p no:cacheprovider -q --continue-on-collection-errors \
    --junitxml="$OUT/pytest-gpu.xml" ${gpu_tests:-tests}

BENCH_BUDGET_S=${BENCH_BUDGET_S:-$((TOTAL_S - SECONDS - 60 > 30 ? TOTAL_S - SECONDS - 60 : 30))}
step "bench" "$OUT/bench.log" timeout -k 20 "$((BENCH_BUDGET_S + 40))" \
    "$PYTHON" -m repro.cli.bench --budget "$BENCH_BUDGET_S" --out "$OUT/bench"

echo "device_check: done, exit $status; results in $OUT" | tee -a "$OUT/summary.txt"
exit "$status"
