#!/usr/bin/env bash
# The GPU benchmarks (BENCHMARKS.md, section 4) in one short run, for a machine with one NVIDIA GPU.
#
#   bash benchmarks/gpu.sh OUTDIR
#
# Runs, each with its own time limit: benchmark 2 (medhub's trainer vs a bare loop, bfloat16 autocast,
# channels-last) for resnet50 and swin_base_patch4_window7_224 at 224 px, batch 64; benchmark 3 (the input
# pipeline over 1024 px PNGs, the model on the GPU, 8 loader workers on both sides). Writes into OUTDIR:
# machine.txt (GPU, driver, torch/timm versions), one JSON per benchmark (its last stdout line) and log.txt
# (everything printed). Environment: PYTHON (default python3), MEDHUB_SHARED (the folder holding
# data/nih_cxr14_1000_64px, default ../shared), DEVICE (default cuda; cpu only to try the script out),
# BATCHES (batches per timed run of benchmark 2, default 50), EXTRA (more options for every benchmark), ONLY
# (names of the benchmarks to run, space-separated; default all).
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUTDIR}
mkdir -p "$out"
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
batches=${BATCHES:-50}
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export MEDHUB_HOME=${MEDHUB_HOME:-$(mktemp -d)}
log="$out/log.txt"
: >"$log"

{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
    nproc
    $py -c "import sys, torch, timm; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"
} >"$out/machine.txt" 2>&1

bench() {  # bench NAME LIMIT_S SCRIPT ARGS...: run one benchmark, keep its JSON line, log everything
    local name=$1 limit=$2
    shift 2
    [[ -z "${ONLY:-}" || " $ONLY " == *" $name "* ]] || return 0
    echo "== $name: $* ($(date -u +%T))" >>"$log"
    # shellcheck disable=SC2086
    timeout "$limit" "$py" "$here/benchmarks/$@" ${EXTRA:-} >"$out/$name.out" 2>>"$log"
    echo "== $name: exit $? ($(date -u +%T))" >>"$log"
    cat "$out/$name.out" >>"$log"
    tail -n 1 "$out/$name.out" >"$out/$name.json"
    rm -f "$out/$name.out"
}

bench train_step_resnet50 120 train_step.py --device "$device" --arch resnet50 --img-size 224 \
    --batch-size 64 --batches "$batches"
bench train_step_swin_base 160 train_step.py --device "$device" --arch swin_base_patch4_window7_224 \
    --img-size 224 --batch-size 64 --batches "$batches"
bench pipeline 180 pipeline.py --device "$device" --workers 8 --threads 8
