#!/usr/bin/env bash
# Device check on a fresh machine with an NVIDIA GPU, in under 5 minutes (TOTAL_S):
#   1. the environment (nvidia-smi, Python, torch, triton, liger-kernel)      -> $OUT/env.txt
#   2. pytest -m gpu, the Triton correctness grid first (a small grid on CUDA, the large shapes
#      with inputs drawn on the GPU), then the bench machinery on CUDA
#                                                    -> $OUT/log.txt, $OUT/pytest-gpu.xml
#      and, beside it on the CPU, the compile-time gate with this machine's Triton
#                                                    -> $OUT/gate.json
#   3. repro-bench steps: paired training steps of the CIFAR CNN per norm, timed with CUDA
#      events under bf16 autocast (trainer.precision=auto on a GPU), on generated images
#                                                    -> $OUT/log.txt, $OUT/steps/steps.json
#   4. repro-bench on the standard GPU grid within what is left of the time
#                                                    -> $OUT/log.txt, $OUT/bench/bench.{json,png}
#   and the exit code and duration of each step     -> $OUT/summary.txt
# (8 files: the most a device run of this workplace returns; bench.csv and steps.png, which
# repeat their JSON, are removed.)
#
# Usage, from anywhere:  OUT=results/device scripts/device_check.sh
#        a dry run of the same logic on a CPU:  DRY_RUN=1 OUT=/tmp/dc scripts/device_check.sh
#
# Assumptions, checked in step 1: the machine's Python (PYTHON, default python3) already has a
# CUDA build of torch and triton -- nothing can be installed from the network there. The repo is
# installed from this tree with `pip install --no-deps --no-build-isolation -e .` (setuptools and
# wheel must be present; the bench and the GPU tests need no other dependency; repro-bench steps
# composes repro-train's config, so it needs hydra-core, omegaconf and antlr4-python3-runtime
# 4.9.3, which the H200 image lacks: carry them as wheels too, or that step fails alone). Wheels found in
# WHEELS (default .whl/) are installed first into $SITE (default /tmp/site, put on PYTHONPATH),
# without the network: that is how Liger-Kernel gets there. Make them where PyPI is reachable
# (pip wheel builds antlr4's, which PyPI has only as source; .whl/ is git-ignored, so a new
# checkout makes it again) and carry them:
#   pip wheel --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 liger-kernel==0.8.5
#   run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=360)   # the device tool
# Without them the bench reports Liger as unavailable and goes on, and the steps step fails alone.
# A copied tree without .git can name its commit in REPRO_GIT_SHA.
#
# Time boxes (seconds, override by environment): TOTAL_S=290 for the whole script,
# SETUP_TIMEOUT_S=60, PYTEST_TIMEOUT_S=110 (then pytest gets SIGINT: it stops, and still writes
# its summary and junit XML), GATE_TIMEOUT_S=PYTEST_TIMEOUT_S, STEPS_TIMEOUT_S=90 (the Triton kernels compile on first use), and BENCH_BUDGET_S, by default
# what is left of TOTAL_S minus 45 s of margin: the bench starts no new case once that much of
# its run has passed and writes what it has (a case already running may overrun it; at
# BENCH_BUDGET_S+30 the bench gets SIGTERM and still writes). The grid is ordered so that a cut
# run still spans N = 512..256K. A failing step does not stop the next one; the exit code is the
# first failing step's.
#
# DRY_RUN=1 runs every step's logic without a GPU: no CUDA check, no install (the current
# environment has the repo), pytest -m gpu collects and skips, and the bench runs BENCH_ARGS
# (default a tiny CPU grid) -- tests/test_device_check.py runs it so.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-results/device}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
DRY_RUN=${DRY_RUN:-0}
TOTAL_S=${TOTAL_S:-290}
SETUP_TIMEOUT_S=${SETUP_TIMEOUT_S:-60}
PYTEST_TIMEOUT_S=${PYTEST_TIMEOUT_S:-110}
GATE_TIMEOUT_S=${GATE_TIMEOUT_S:-$PYTEST_TIMEOUT_S}
STEPS_TIMEOUT_S=${STEPS_TIMEOUT_S:-90}
STEPS_DATA=${STEPS_DATA:-/tmp/repro-steps-cifar}
if [ "$DRY_RUN" = 1 ]; then
    BENCH_ARGS=${BENCH_ARGS:---device cpu --quick --ops rms_norm --backends eager --passes fwd --M 64 --N 256}
    STEPS_ARGS=${STEPS_ARGS:-model.width=4 data.batch_size=8 --norms rmsnorm --steps 3 --warmup 1 --norm-steps 2}
else
    # one pRMSNorm ratio: each op at each shape pays a torch.compile, and the budget is short
    BENCH_ARGS=${BENCH_ARGS:---partials 0.125}
    # the paper's width and batch, every Table 10 norm but weightnorm (its time is in the conv)
    STEPS_ARGS=${STEPS_ARGS:-model.width=96 data.batch_size=100 --norms rmsnorm,prmsnorm,batchnorm,none --steps 40}
fi
mkdir -p "$OUT/bench"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1
status=0

note() { echo "$*" | tee -a "$OUT/summary.txt"; }

record() {  # record NAME RC START: the exit code and duration of a step; keep the first failure
    note "$1: exit $2 after $((SECONDS - $3)) s"
    if [ "$2" -ne 0 ] && [ "$status" -eq 0 ]; then status=$2; fi
}

step() {  # step NAME LOGFILE COMMAND...: run, time, log, and record the exit code
    local name=$1 log=$2 start=$SECONDS rc
    shift 2
    echo "== $name: $*" | tee -a "$log"
    "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    record "$name" "$rc" "$start"
    return "$rc"
}

: > "$OUT/summary.txt"
: > "$OUT/env.txt"
: > "$LOG"
[ "$DRY_RUN" = 1 ] && note "device_check: DRY RUN (no GPU needed; nothing installed)"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -a)"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo "${REPRO_GIT_SHA:-unknown (no .git; set REPRO_GIT_SHA)}")"
    echo "cpus: $(nproc)"
    nvidia-smi || echo "nvidia-smi: not found"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
        --format=csv 2>/dev/null
} >> "$OUT/env.txt" 2>&1

if [ "$DRY_RUN" != 1 ] && ! "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" >> "$OUT/env.txt" 2>&1; then
    note "device_check: $PYTHON has no CUDA-enabled torch (see $OUT/env.txt); nothing to check"
    exit 1
fi

# ---------------------------------------------------------------------------- 1. install
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    target=$SITE
    [ "$DRY_RUN" = 1 ] && target="$OUT/.site"  # prove the install, touch nothing outside OUT
    step "wheels" "$OUT/env.txt" timeout "$SETUP_TIMEOUT_S" "$PYTHON" -m pip install -q --no-index \
        --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$WHEELS"/*.whl \
        && [ "$DRY_RUN" != 1 ] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    [ "$DRY_RUN" = 1 ] && rm -rf "$target"
fi
if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: the current environment's repro is used" >> "$OUT/env.txt"
# Editable, so the tests and the bench run this very tree; where the image's setuptools cannot
# build an editable install, a plain copy of the tree does as well.
elif ! timeout "$SETUP_TIMEOUT_S" "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-cache-dir \
        -e . >> "$OUT/env.txt" 2>&1; then
    note "editable install failed (see env.txt); installing a copy"
    step "install" "$OUT/env.txt" timeout "$SETUP_TIMEOUT_S" \
        "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-cache-dir . || exit "$status"
fi
"$PYTHON" - >> "$OUT/env.txt" 2>&1 <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
for dist in ("triton", "liger-kernel", "pytest", "hypothesis"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "not installed")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}: {p.multi_processor_count} SMs, {p.L2_cache_size / 2**20:.0f} MiB L2, "
          f"{p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
import repro.kernels
print("repro.kernels backends:", repro.kernels.BACKENDS)
EOF

# ---------------------------------------------------------------------------- 2. tests + gate
# The gate compiles on the CPU beside pytest (16 cores), and is done before the bench starts,
# whose small cases the host's speed sets.
gate_start=$SECONDS
env -u TRITON_INTERPRET timeout -k 5 "$GATE_TIMEOUT_S" \
    "$PYTHON" -m repro.kernels.triton.register_report --json > "$OUT/gate.json" 2>> "$LOG" &
gate_pid=$!

# Only the files that mark GPU tests (the others may import packages the image lacks: hydra,
# wandb, ...), the Triton correctness grid first (PYTEST_TARGETS overrides). SIGINT at the time box: pytest stops the test
# it is in, and still prints its summary and writes the junit XML.
gpu_tests=${PYTEST_TARGETS:-"tests/test_triton_kernels.py $(grep -lE "mark\.gpu" tests/test_*.py | grep -v test_triton_kernels.py | tr '\n' ' ')"}
# shellcheck disable=SC2086
step "pytest-gpu" "$LOG" timeout -s INT -k 15 "$PYTEST_TIMEOUT_S" \
    "$PYTHON" -m pytest -m gpu -p no:cacheprovider -q -rfE --continue-on-collection-errors \
    --junitxml="$OUT/pytest-gpu.xml" $gpu_tests

wait "$gate_pid"
record "gate" "$?" "$gate_start"

# ---------------------------------------------------------------------------- 3. steps
# Generated images (no dataset travels): step time does not depend on what the pixels show.
# shellcheck disable=SC2016,SC2086
step "steps" "$LOG" timeout -k 10 "$STEPS_TIMEOUT_S" bash -c \
    '"$1" -m repro.data.fixtures "$2" --train 200 --test 100 > /dev/null && shift 2 && exec "$@"' _ \
    "$PYTHON" "$STEPS_DATA" "$PYTHON" -m repro.cli.bench steps task=cifar10_cnn "data.root=$STEPS_DATA" \
    data.download=false data.val_size=0 logger=none $STEPS_ARGS --out "$OUT/steps"
rm -f "$OUT/steps/steps.png"

# ---------------------------------------------------------------------------- 4. bench
BENCH_BUDGET_S=${BENCH_BUDGET_S:-$((TOTAL_S - SECONDS - 45 > 20 ? TOTAL_S - SECONDS - 45 : 20))}
# shellcheck disable=SC2086
step "bench" "$LOG" timeout -k 15 "$((BENCH_BUDGET_S + 30))" \
    "$PYTHON" -m repro.cli.bench --budget "$BENCH_BUDGET_S" --out "$OUT/bench" $BENCH_ARGS

rm -f "$OUT"/bench/*.csv  # the same rows as the JSON; the 8-file limit
note "device_check: done, exit $status after $SECONDS s; results in $OUT"
exit "$status"
