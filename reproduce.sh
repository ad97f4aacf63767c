#!/usr/bin/env bash
# The README's small-scale reproduction of the paper's comparison, in one command:
#   SFT, RLSR and SFT -> RLSR from the packaged SmolLM2-135M-Instruct on AlpacaEval's train split (default settings
#   of each script), then all four (the base model included) evaluated side by side on 100 held-out AlpacaEval
#   prompts and 100 IFEval prompts. About an hour on 2 CPU cores; each stage prints its own wall time.
#     bash reproduce.sh [OUT_DIR]        (default runs/reproduction; it must not hold earlier runs)
set -euo pipefail
out=${1:-runs/reproduction}
stage() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "== $name: $((SECONDS - t0)) s"; }
stage sft       python train_sft.py --out-dir "$out/sft"
stage rlsr      python train_rlsr.py --out-dir "$out/rlsr"
stage sft-rlsr  python train_rlsr.py --init "$out/sft/final" --out-dir "$out/sft-rlsr"
stage eval      python eval.py base "$out/sft/final" "$out/rlsr/final" "$out/sft-rlsr/final" \
                    --names base sft rlsr sft+rlsr --limit 100 --out-dir "$out/eval"
