#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): run from the repo root on a machine with a CUDA GPU, after
# `python -m bench.gpu_check export` prepared bench/gpu_inputs (carry that folder to a device machine).
# Writes bench/results/gpu.json (and $OUT/gpu.json when $OUT is set). Under 8 minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'" \
  || { echo "gpu_check: torch sees no CUDA GPU here (run it where one is, or: python -m bench.gpu_check run --device cpu)"; exit 2; }
timeout 470 python3 -m bench.gpu_check run "$@"
