#!/usr/bin/env bash
# The queue of issue 14's long CPU-budget jobs, one at a time in a fixed order, then the tables:
#
#   table10   Table 10 on a CPU budget: experiment=cifar10_table10_cpu, six norms x 3 seeds
#             (width 32, 20 epochs, bf16 autocast; 21-30 min a run on 2 idle cores with bf16
#             instructions, ~9 h), one sweep per seed so every norm has seed 1 before any has
#             seed 2. On a CPU without oneDNN bf16 (AVX2 only) the runs emulate bf16 autocast in
#             fp32 (repro.train.bf16_emulation: same rounding points, fp32 speed, ~1 h a run); the
#             job says so in one line before it starts
#   table4    Table 4 on a CPU budget: experiment=multi30k_table4_cpu, four norms x 3 seeds
#             (3+3-layer Transformer, 1800 steps; 11-13 min a run, ~2.5 h)
#   deep      "Does the no-norm Transformer fail at depth?": experiment=multi30k_nonorm_deep,
#             none and LayerNorm at 6+6 and 3+3 layers, at lr 0.002 and 0.0005, 900 steps, seed 1
#             (DEEP_SEEDS=1,2,3 for three), then seed 2 at lr 0.0005 only, where the control
#             trains and the call is made (DEEP_LOW_LR_SEEDS, empty for none); 9-15 min a 6+6 run,
#             7-11 min a 3+3 run
#   shift     the shift-sensitivity analysis (repro-tables analyze shift-training: 12 short
#             Transformer runs, LayerNorm/RMSNorm x weights centred at 0/0.2 x seeds 1-3)
#   tables    repro-tables over the three sweeps' run stores -> results/tables (seconds)
#
#   scripts/cpu_budget_runs.sh [--dry-run] [--only NAME[,NAME...]] [--data DIR]
#   --dry-run     print each job's command, run nothing
#   --only NAME   run only these jobs (repeatable or a comma list), in the queue's order
#   --data DIR    the shared data folder (default $DATA, else ../shared/data)
#
# Resumable: rerun the script and it continues where it stopped. Each sweep writes into a fixed
# hydra.sweep.dir (results/runs/<experiment>), one folder per run named by task, norm and seed:
# a killed run resumes from its last checkpoint, a completed one (with its checkpoint) is skipped
# in about a second (repro-train skips a run dir holding this run completed). A failing job stops
# the queue. One line per job says when it started and how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }

JOBS=(table10 table4 deep shift tables)
DATA="${DATA:-../shared/data}"
DEEP_SEEDS="${DEEP_SEEDS:-1}"
DEEP_LOW_LR_SEEDS="${DEEP_LOW_LR_SEEDS-2}"
DEEP_LOW_LR=0.0005  # conf/experiment/multi30k_nonorm_deep.yaml's lower lr
dry_run=0
only=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --only) [[ $# -ge 2 ]] || { echo "cpu_budget_runs.sh: --only needs a job name (${JOBS[*]})" >&2; exit 2; }
                IFS=, read -ra names <<< "$2"; only+=("${names[@]}"); shift ;;
        --data) [[ $# -ge 2 ]] || { echo "cpu_budget_runs.sh: --data needs a folder" >&2; exit 2; }
                DATA="$2"; shift ;;
        -h|--help) usage 0 ;;
        *) echo "cpu_budget_runs.sh: unknown option '$1' (allowed: --dry-run --only NAME --data DIR)" >&2; exit 2 ;;
    esac
    shift
done
for name in "${only[@]}"; do
    [[ " ${JOBS[*]} " == *" $name "* ]] || {
        echo "cpu_budget_runs.sh: --only $name is not a job: must be one of ${JOBS[*]}" >&2; exit 2; }
done
[[ "$DEEP_SEEDS" =~ ^[0-9]+(,[0-9]+)*$ ]] || {
    echo "cpu_budget_runs.sh: DEEP_SEEDS must be a comma list of ints, got '$DEEP_SEEDS'" >&2; exit 2; }
[[ "$DEEP_LOW_LR_SEEDS" =~ ^([0-9]+(,[0-9]+)*)?$ ]] || {
    echo "cpu_budget_runs.sh: DEEP_LOW_LR_SEEDS must be a comma list of ints or empty, got '$DEEP_LOW_LR_SEEDS'" >&2; exit 2; }

RUNS=results/runs
TABLE10_NOTE="CPU budget, not the paper's schedule: experiment=cifar10_table10_cpu, Salimans & Kingma's protocol \
(ZCA, input noise, the norm on every layer, Adam with the per-norm lr, decay and beta1 switch over the second half, \
data-dependent init for none/weightnorm, all 50k training images, the test set) at widths 32/64 (paper: 96/192) for \
20 epochs (paper: 200) under bf16 autocast (paper: fp32; the norms keep fp32 statistics), seeds 1-3 per norm (the seeds \
column counts the completed runs), pRMSNorm p = 12.5 % (the full RMS on the 10-way layer: see the experiment file); one \
run at a time with 2 threads on a 2-core AMD EPYC VM (Zen 4: with AVX512_BF16, or with AVX-512 hidden and bf16 autocast \
emulated in fp32, the same rounding points, for the runs listed under Measured on). Made by: scripts/cpu_budget_runs.sh --only \
table10 (for seed 1, 2, 3 in turn: repro-train -m experiment=cifar10_table10_cpu data.root=../shared/data/cifar10-jpg \
logger=none seed=SEED norm=none,batchnorm,weightnorm,layernorm,rmsnorm,prmsnorm \
hydra.sweep.dir=results/runs/cifar10_table10_cpu); run stores in results/runs/cifar10_table10_cpu."
TABLE4_NOTE="CPU budget, not the paper's schedule: experiment=multi30k_table4_cpu, a small post-norm Transformer \
(dim 128, FFN 512, 4 heads, 3+3 layers, dropout 0.1; paper: Transformer base) on Multi30k En-De (paper: WMT14 En-De), \
1800 steps of about 2048 tokens (paper: 300k steps of ~25k tokens), Adam 0.002 with inverse-sqrt warm-up over 400 \
steps, label smoothing 0.1, beam 4; BLEU on test_2016_flickr; pRMSNorm p = 6.25 %; seeds 1-3 per norm (the seeds column counts the completed runs); one run at a \
time with 2 threads on a 2-core AMD EPYC (Zen 4) VM. The depth section: experiment=multi30k_nonorm_deep, the same \
model at 6+6 and at 3+3 layers for 900 steps, none and LayerNorm at peak lr 0.002 (the table's) and ${DEEP_LOW_LR}, seeds ${DEEP_SEEDS}\
${DEEP_LOW_LR_SEEDS:+ (and ${DEEP_LOW_LR_SEEDS} at ${DEEP_LOW_LR})}. Made by: scripts/cpu_budget_runs.sh \
--only table4,deep (repro-train -m experiment=multi30k_table4_cpu data.root=../shared/data/multi30k logger=none \
seed=1,2,3 norm=none,layernorm,rmsnorm,prmsnorm hydra.sweep.dir=results/runs/multi30k_table4_cpu; repro-train -m \
experiment=multi30k_nonorm_deep data.root=../shared/data/multi30k logger=none seed=${DEEP_SEEDS} \
hydra.sweep.dir=results/runs/multi30k_nonorm_deep${DEEP_LOW_LR_SEEDS:+, and the same with seed=${DEEP_LOW_LR_SEEDS} optim.lr=${DEEP_LOW_LR}}); run stores in results/runs/multi30k_table4_cpu and \
results/runs/multi30k_nonorm_deep."

quoted() {  # the words as a shell line: plain words bare, others in single quotes
    local word out=()
    for word in "$@"; do
        if [[ "$word" =~ ^[A-Za-z0-9_=,./:+@%-]+$ ]]; then out+=("$word"); else out+=("'${word//\'/\'\\\'\'}'"); fi
    done
    echo "${out[*]}"
}

commands_of() {  # the job's commands into `commands`, each a shell-quoted line (see `quoted`)
    commands=()
    case "$1" in
        table10) local seed
                 for seed in 1 2 3; do
                     commands+=("$(quoted repro-train -m experiment=cifar10_table10_cpu "data.root=$DATA/cifar10-jpg" \
                                logger=none "seed=$seed" norm=none,batchnorm,weightnorm,layernorm,rmsnorm,prmsnorm \
                                "hydra.sweep.dir=$RUNS/cifar10_table10_cpu" trainer.progress_bar=false)")
                 done ;;
        table4) commands+=("$(quoted repro-train -m experiment=multi30k_table4_cpu "data.root=$DATA/multi30k" logger=none \
                              seed=1,2,3 norm=none,layernorm,rmsnorm,prmsnorm \
                              "hydra.sweep.dir=$RUNS/multi30k_table4_cpu" trainer.progress_bar=false)") ;;
        deep) commands+=("$(quoted repro-train -m experiment=multi30k_nonorm_deep "data.root=$DATA/multi30k" logger=none \
                            "seed=$DEEP_SEEDS" "hydra.sweep.dir=$RUNS/multi30k_nonorm_deep" trainer.progress_bar=false)")
              # more seeds where the call is made: the lower lr, where the 6+6 control trains
              [[ -z "$DEEP_LOW_LR_SEEDS" ]] || commands+=("$(quoted repro-train -m experiment=multi30k_nonorm_deep \
                            "data.root=$DATA/multi30k" logger=none "seed=$DEEP_LOW_LR_SEEDS" "optim.lr=$DEEP_LOW_LR" \
                            "hydra.sweep.dir=$RUNS/multi30k_nonorm_deep" trainer.progress_bar=false)") ;;
        # The flags are the shift-training analysis's own (repro/analysis/shift_training.py: the 3+3
        # Transformer on Multi30k, 400 steps a run, LayerNorm/RMSNorm x weights centred at 0/0.2 x
        # seeds); it reuses its completed runs and resumes an interrupted one. --out is its folder.
        shift) commands+=("$(quoted repro-tables analyze shift-training --data-root "$DATA/multi30k" \
                             --task multi30k_transformer --seeds 1,2,3 --runs "$RUNS/shift_training" \
                             --out results/analysis)") ;;
        tables) commands+=("$(quoted repro-tables --runs "$RUNS/cifar10_table10_cpu" --runs "$RUNS/multi30k_table4_cpu" \
                              --runs "$RUNS/multi30k_nonorm_deep" --out results \
                              --note "table10=$TABLE10_NOTE" --note "table4=$TABLE4_NOTE")") ;;
    esac
}

selected=()
for name in "${JOBS[@]}"; do
    if [[ ${#only[@]} -eq 0 || " ${only[*]} " == *" $name "* ]]; then
        selected+=("$name")
    fi
done

# The table10 job's budget assumes a CPU whose oneDNN runs bf16 (see the header); elsewhere its
# runs emulate bf16 autocast and take about twice as long: say so before they start. An unknown
# answer (repro not importable by this python) says nothing: repro-train logs it at each start.
note_bf16() {
    local route
    route=$(python -c 'import torch; from repro.train.bf16_emulation import bf16_route; print(bf16_route(torch.device("cpu")))' 2>/dev/null || true)
    if [[ "$route" == emulated ]]; then
        echo "cpu_budget_runs.sh: this CPU has no oneDNN bf16 (AVX2 only): the table10 runs emulate bf16 autocast in fp32 (repro.train.bf16_emulation, the same rounding points) at fp32 speed, about 1 h a run instead of <= 30 min (results/steps/README.md)" >&2
    fi
}

elapsed() { local s=$1; printf '%dh%02dm%02ds' $((s / 3600)) $((s % 3600 / 60)) $((s % 60)); }

i=0
for name in "${selected[@]}"; do
    i=$((i + 1))
    commands_of "$name"
    if [[ "$dry_run" == 1 ]]; then  # one line per command: exactly what it would run
        printf '%s\n' "${commands[@]}"
        continue
    fi
    [[ "$name" == table10 ]] && note_bf16
    started=$(date +%s)
    echo "== [$i/${#selected[@]}] $name: started $(date -u +%H:%M:%S) UTC"
    for line in "${commands[@]}"; do
        echo "== $line"
        eval "$line" || {
            status=$?
            echo "== [$i/${#selected[@]}] $name: FAILED (exit $status) after $(elapsed $(( $(date +%s) - started ))); rerun the script to continue from here" >&2
            exit "$status"
        }
    done
    echo "== [$i/${#selected[@]}] $name: done in $(elapsed $(( $(date +%s) - started )))"
done
