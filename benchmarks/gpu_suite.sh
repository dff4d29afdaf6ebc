#!/usr/bin/env bash
# What we run on a lent GPU machine: the CUDA tests, the benchmarks, and a multi-GPU DDP check.
# Expects torch (and transformers, tokenizers, safetensors, pyarrow) installed; figures go to $OUT
# when set. Usage: bash benchmarks/gpu_suite.sh [NPROC]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pico-gpu}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/shared:$PWD/pico-train:$PWD/pico-analyze${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false PICO_CACHE=/tmp/pico-cache OMP_NUM_THREADS=4
NPROC=${1:-$(python3 -c 'import torch; print(torch.cuda.device_count())')}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"
(cd pico-train/tests && python3 -m pytest -q -p no:cacheprovider test_gpu.py test_model.py test_checkpoint.py test_capture.py) 2>&1 | tail -5 | tee "$OUT/tests.txt"
(cd pico-analyze/tests && python3 -m pytest -q -p no:cacheprovider test_metrics.py) 2>&1 | tail -3 | tee -a "$OUT/tests.txt"
python3 benchmarks/bench_capture.py 2>&1 | tail -5 | tee "$OUT/bench_capture.txt"
SMALL="--set preset=small --set data.seq_len=2048 --set data.eval_sequences=32 --set training.global_batch_size=128 --set training.micro_batch_size=16 --set training.max_steps=30 --set training.warmup_steps=5 --set checkpointing.every=0 --set checkpointing.steps=[] --set capture.batch_size=128"
python3 benchmarks/bench_train.py $SMALL --set training.compile=true 2>&1 | tail -6 | tee "$OUT/bench_train_small.txt"
python3 benchmarks/bench_train.py --set training.max_steps=300 2>&1 | tail -6 | tee "$OUT/bench_train_demo.txt"
if [ -f benchmarks/bench_analyze.py ]; then python3 benchmarks/bench_analyze.py 2>&1 | tail -8 | tee "$OUT/bench_analyze.txt"; fi
if [ "$NPROC" -gt 1 ]; then
  python3 benchmarks/check_ddp.py --nproc "$NPROC" $SMALL --set training.max_steps=10 2>&1 | tail -4 | tee "$OUT/ddp.txt"
fi
