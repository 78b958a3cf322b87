#!/usr/bin/env bash
# Checks a GPU machine in one command (about 8 minutes at most on one GPU): bf16, DeepSpeed ZeRO-2/3
# through accelerate, vLLM when installed, the judge's throughput and SFT MFU. Prints a table and
# writes gpu_check.json; details in scripts/gpu_check.py.
#   make gpu-check                      # or: bash scripts/gpu_check.sh [--out FILE] [--root DIR]
# Without a GPU it says so and exits 0 at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi finds none): nothing to check."
  exit 0
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: nvidia-smi sees a GPU but torch.cuda.is_available() is false: install a CUDA" \
    "build of torch (make install TORCH_SPEC=...)."
  exit 1
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}" WANDB_MODE="${WANDB_MODE:-disabled}"
# 8 minutes at most: whatever has not finished by then is cut off.
exec timeout 480 "$PY" scripts/gpu_check.py "$@"
