#!/usr/bin/env bash
# Run the sweeps, then rebuild every table, figure and analysis from them.
#
#   scripts/reproduce.sh mini [--cpu-smoke] [--seeds 1,2,3] [--runs DIR] [--out DIR] [--data DIR]
#                                            (--cpu-smoke: seeds 1,2 unless given)
#   scripts/reproduce.sh full [--seeds 1,2,3] [--runs DIR] [--out DIR] [--data DIR]
#   --dry-run (either mode): print each sweep's repro-train command, run nothing
#
# mini       CIFAR-10 ConvPool-CNN-C (every Table 10 norm, 30 epochs instead of 200) and a small
#            Transformer on Multi30k En-De (experiment multi30k_table4_mini: none / LayerNorm /
#            RMSNorm / pRMSNorm p = 6.25 %, 6k steps), 3 seeds:
#            sized for a few hours on one GPU (an estimate, not yet timed end to end); data from
#            --data (default ../shared/data).
# --cpu-smoke  the same pipeline on generated tiny data, a few steps per run: minutes on a CPU.
#            It proves the pipeline, not the paper: its numbers mean nothing.
# full       the paper's schedules: CIFAR-10 200 epochs per norm, Transformer base on WMT14 En-De
#            (experiment wmt14_table4: 300k steps of ~25k tokens per norm; WMT14 through
#            `datasets`: needs its cache or a network): weeks on one GPU (the paper's V100 took
#            about 248 s per 1k steps with LayerNorm, ~21 h per 300k-step run; 39 s per CIFAR
#            epoch on a 2080 Ti with LayerNorm).
#
# Runs go to --runs (default multirun/reproduce/<mode>, git-ignored); sweeps resume where they
# stopped (trainer.resume=auto finds each run's last checkpoint), so re-running the script
# continues an interrupted sweep. Tables, figures and analyses go to --out (default results/;
# for --cpu-smoke <runs>/results, since its numbers are not results).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }

mode="${1:-}"
[[ "$mode" == "-h" || "$mode" == "--help" ]] && usage 0
[[ "$mode" == "mini" || "$mode" == "full" ]] || { echo "reproduce.sh: mode must be mini or full, got '${mode}'" >&2; usage 2; }
shift
cpu_smoke=0
dry_run=0
seeds=""
data="${REPRO_SHARED_DATA:-../shared/data}"
runs=""
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu-smoke) cpu_smoke=1 ;;
        --dry-run) dry_run=1 ;;
        --seeds) seeds="$2"; shift ;;
        --runs) runs="$2"; shift ;;
        --out) out="$2"; shift ;;
        --data) data="$2"; shift ;;
        -h|--help) usage 0 ;;
        *) echo "reproduce.sh: unknown option '$1' (allowed: --cpu-smoke --dry-run --seeds --runs --out --data)" >&2; exit 2 ;;
    esac
    shift
done
[[ "$cpu_smoke" == 0 || "$mode" == "mini" ]] || { echo "reproduce.sh: --cpu-smoke goes with mini" >&2; exit 2; }
if [[ "$cpu_smoke" == 1 ]]; then
    runs="${runs:-multirun/reproduce/smoke}"; out="${out:-$runs/results}"; seeds="${seeds:-1,2}"
else
    runs="${runs:-multirun/reproduce/$mode}"; out="${out:-results}"; seeds="${seeds:-1,2,3}"
fi
[[ "$seeds" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "reproduce.sh: --seeds must be a comma list of ints, got '$seeds'" >&2; exit 2; }

# One Hydra multirun per sweep, into a fixed folder so a re-run resumes it.
sweep() {
    local name="$1"; shift
    local command=(repro-train -m "$@" "hydra.sweep.dir=$runs/$name" 'hydra.sweep.subdir=${task.name}_${norm.name}_seed${seed}')
    if [[ "$dry_run" == 1 ]]; then  # one line per sweep: exactly the command it would launch
        printf '%q ' "${command[@]}"; echo
        return
    fi
    echo "== sweep $name -> $runs/$name"
    "${command[@]}"
}

translation=multi30k
if [[ "$cpu_smoke" == 1 ]]; then
    fixtures="$runs/fixtures"
    python -m repro.data.fixtures "$fixtures/cifar10" >/dev/null
    python -m repro.data.translation_fixtures "$fixtures/multi30k" >/dev/null
    sweep cifar10 experiment=smoke "data.root=$fixtures/cifar10" norm=layernorm,rmsnorm,prmsnorm "seed=$seeds"
    sweep multi30k experiment=translation_smoke "data.root=$fixtures/multi30k" \
        "data.tokenizer=$fixtures/multi30k/spm.model" norm=layernorm,rmsnorm,prmsnorm "seed=$seeds"
elif [[ "$mode" == "mini" ]]; then
    sweep cifar10 experiment=cifar10_table10 "data.root=$data/cifar10-jpg" trainer.max_epochs=30 \
        norm=none,batchnorm,weightnorm,layernorm,rmsnorm,prmsnorm "seed=$seeds"
    sweep multi30k experiment=multi30k_table4_mini "data.root=$data/multi30k" \
        norm=none,layernorm,rmsnorm,prmsnorm "seed=$seeds"
else
    sweep cifar10 experiment=cifar10_table10 "data.root=$data/cifar10-jpg" \
        norm=none,batchnorm,weightnorm,layernorm,rmsnorm,prmsnorm "seed=$seeds"
    translation=wmt14
    sweep wmt14 experiment=wmt14_table4 norm=none,layernorm,rmsnorm,prmsnorm "seed=$seeds"
fi

[[ "$dry_run" == 1 ]] && exit 0

echo "== tables and figures -> $out"
# Only the two sweeps: the shift-training runs below are Multi30k runs too, but not Table 4's.
repro-tables --runs "$runs/cifar10" --runs "$runs/$translation" --out "$out"
# The partial-RMS analysis reads the activations of a trained pRMSNorm CNN.
trained="$(ls -d "$runs"/cifar10/*_prmsnorm_seed* | head -n 1)"
repro-tables analyze all --run "$trained" --out "$out/analysis"
# Shift sensitivity: short Transformer runs on Multi30k, LayerNorm/RMSNorm x weights centred at
# 0 / 0.2 x seeds (the CNN's spatial norm is refused: there the shift is not constant per row).
if [[ "$cpu_smoke" == 1 ]]; then
    repro-tables analyze shift-training --data-root "$fixtures/multi30k" --seeds "$seeds" --steps 6 \
        --runs "$runs/shift_training" --out "$out/analysis" --set experiment=translation_smoke \
        "data.tokenizer=$fixtures/multi30k/spm.model" model.dim=32 model.ffn=64 model.heads=2 \
        data.max_tokens=1024 optim.lr=0.003 optim.schedule.warmup_steps=10
    repro-tables analyze control-bits-training --data-root "$fixtures/cifar10" --steps 2 --out "$out/analysis"
else
    repro-tables analyze shift-training --data-root "$data/multi30k" --seeds "$seeds" --steps 400 \
        --runs "$runs/shift_training" --out "$out/analysis"
    # pRMSNorm with large channels inside / outside its prefix: 24 small MLPs, minutes on a CPU
    repro-tables analyze control-bits-training --data-root "$data/cifar10-jpg" --out "$out/analysis"
fi
echo "== done: $out/tables, $out/figures, $out/analysis"
