#!/usr/bin/env bash
# Does repro-bench steps' paired ratio survive a busy machine? (issue 12) For each task and thread
# count, one measurement on a quiet host and one beside a CPU-bound neighbour, written to
# results/steps/<prefix>-<task>-threads<N>-<quiet|neighbour>/ (prefix: contention unless --prefix).
#
# The neighbour competes for the cores the measurement runs on: with 2 threads on 2 cores it
# takes a share of both; with 1 thread, measurement and neighbour are pinned to the same core
# (taskset -c 0), since on a 2-core host a 1-thread measurement and a 1-thread neighbour would
# otherwise each get a core of their own and nothing would be contended.
#
#   bash scripts/steps_contention.sh [--data DIR] [--steps N] [--prefix NAME] [--dry-run]
#
# --prefix keeps a new series beside the committed ones instead of overwriting them.
#
# Run it alone (no tests, no training beside it) from a committed tree: each steps.json records
# the commit and whether the tree had uncommitted changes. About 4 minutes a measurement, 8 in all.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=../shared/data
STEPS=40
PREFIX=contention
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --data) DATA=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --prefix) PREFIX=$2; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "steps_contention.sh: unknown argument '$1' (allowed: --data DIR, --steps N, --prefix NAME, --dry-run)" >&2; exit 2 ;;
    esac
done
if ! [[ "$PREFIX" =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "steps_contention.sh: --prefix '$PREFIX' must be a folder name (letters, digits, '.', '_', '-')" >&2
    exit 2
fi

if [ "$DRY" = 0 ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "steps_contention.sh: warning: the tree has uncommitted changes; each steps.json will say so" >&2
fi
if [ "$DRY" = 0 ] && ! command -v taskset >/dev/null; then
    echo "steps_contention.sh: taskset (util-linux) is needed to pin the 1-thread runs to one core" >&2
    exit 1
fi

declare -A TASK_ARGS=(
    [cifar10_cnn]="experiment=cifar10_table10_mini data.root=$DATA/cifar10-jpg"
    [multi30k_transformer]="experiment=multi30k_table4_cpu data.root=$DATA/multi30k"
)

measure() {  # task threads host
    local task=$1 threads=$2 host=$3 pin=() pid=""
    local out=results/steps/$PREFIX-$task-threads$threads-$host
    [ "$threads" = 1 ] && pin=(taskset -c 0)
    # shellcheck disable=SC2206
    local cmd=("${pin[@]}" repro-bench steps ${TASK_ARGS[$task]} logger=none --norms layernorm,rmsnorm,prmsnorm
               --threads "$threads" --steps "$STEPS" --out "$out")
    if [ "$DRY" = 1 ]; then
        [ "$host" = neighbour ] && echo "${pin[*]} python -c 'while True: pass' &"
        echo "${cmd[*]}"
        return
    fi
    sleep 30  # let the previous measurement's load settle out of the load average
    if [ "$host" = neighbour ]; then
        "${pin[@]}" python -c "while True: pass" &
        pid=$!
        sleep 5
    fi
    echo "== $out ($(date -u +%H:%M:%S))"
    "${cmd[@]}" || status=$?
    [ -n "$pid" ] && kill "$pid"
    return "${status:-0}"
}

for task in cifar10_cnn multi30k_transformer; do
    for threads in 2 1; do
        for host in quiet neighbour; do
            measure "$task" "$threads" "$host"
        done
    done
done
