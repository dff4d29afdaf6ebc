#!/usr/bin/env bash
# Issue 9's GPU figures on a 2-GPU machine: CUDA tests, loss implementations, every preset with the
# default config on one GPU, and 2-GPU scaling (DDP, FSDP2). Figures go to $OUT (BENCHMARKS.md).
# Usage: bash benchmarks/gpu_train_suite.sh [tests|single|multi|all]
# Evaluation and capture are off at the final checkpoint only to save machine time: they are not
# part of the steady throughput measured.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pico-gpu}; mkdir -p "$OUT"
WHAT=${1:-all}
export PYTHONPATH="$PWD/shared:$PWD/pico-train:$PWD/pico-analyze${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false PICO_CACHE=/tmp/pico-cache OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1
QUIET="--set evaluation.enabled=false --set capture.enabled=false"
if [ "$WHAT" = tests ] || [ "$WHAT" = all ]; then
  (cd pico-train/tests && timeout 300 python3 -m pytest -q -p no:cacheprovider test_gpu.py test_loss.py 2>&1 | tail -6) | tee "$OUT/tests.txt"
  timeout 120 python3 benchmarks/bench_loss.py --repeat 5 --shapes medium large 2>&1 | tee "$OUT/bench_loss.txt"
fi
if [ "$WHAT" = single ] || [ "$WHAT" = all ]; then
  # Presets to run (default all); with 2+ GPUs they are spread over two GPUs, one run per GPU at
  # a time, else run one after another.
  PRESETS=${PRESETS:-small medium large 1b}
  NGPU=$(nvidia-smi -L | wc -l)
  python3 -c "from pico_train.config import load_config; from pico_train.data import build_data; build_data(load_config(overrides=['preset=small']))" >/dev/null 2>&1
  lane() {  # lane GPU PRESET...
    local gpu=$1; shift
    for p in "$@"; do
      CUDA_VISIBLE_DEVICES=$gpu timeout 240 python3 benchmarks/bench_train.py --preset "$p" --steps 10 $QUIET 2>&1 | grep -v '^note'
    done > "$OUT/bench_1gpu_$gpu.txt"
  }
  set -- $PRESETS
  if [ "$NGPU" -ge 2 ] && [ $# -ge 2 ]; then
    half=$(( ($# + 1) / 2 ))
    lane 0 "${@:1:$half}" & lane 1 "${@:$((half + 1))}" & wait
  else
    lane 0 "$@"
  fi
  cat "$OUT"/bench_1gpu_*.txt
fi
if [ "$WHAT" = multi ] || [ "$WHAT" = all ]; then
  for spec in "1b fsdp" "medium ddp" "large ddp"; do
    set -- $spec
    BENCH_RUN_DIR=/tmp/bench2_$1 timeout 200 python3 -m torch.distributed.run --nproc_per_node 2 \
      benchmarks/bench_train.py --preset "$1" --steps 10 --set training.parallelism="$2" $QUIET 2>&1 \
      | grep -v '^note' | tail -8
  done | tee "$OUT/bench_2gpu.txt"
fi
