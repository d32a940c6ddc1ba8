#!/usr/bin/env bash
# One prepared GPU check (<= 8 minutes on one H100/H200, synthetic uint8 data, no downloads):
# the GPU's name, bf16-vs-fp32 loss parity and device-transform parity, then pairs/s, peak
# memory and MFU of ViT-B/32 training at batch 256 for fp32 / bf16 / bf16+compile, and the
# input pipeline's images/s alone.
#   bash bench/gpu.sh            (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -m bench.train --device cuda --model_config vit-b-32 --batch_size 256 \
    --settings fp32,amp_bf16,amp_bf16+compile --warmup 5 --steps 20 --images 4096 \
    --num_workers 8 --parity --loader
