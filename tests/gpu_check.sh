#!/usr/bin/env bash
# On a CUDA machine, after the README's set-up: the GPU tests, then the bf16 benchmarks with tokens/s and MFU.
# About 5 minutes on one H100. CI has no GPU; there these tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m pytest -q -s tests/test_gpu.py
for rows in 8 64; do python bench.py sample --rows $rows --new-tokens 256 --dtype bfloat16 --device cuda | tail -2; done
python bench.py sample --rows 64 --new-tokens 256 --dtype bfloat16 --device cuda --compile | tail -2
python bench.py rlsr-step --prompts 8 --group 8 --new-tokens 256 --beta 0.04 --dtype bfloat16 --device cuda | tail -7
