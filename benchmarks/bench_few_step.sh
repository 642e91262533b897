#!/usr/bin/env bash
# Few-step generation (issue 36, point 2): a diffusion generator (v-prediction, sonosynth's default) and a
# rectified-flow generator (`prediction_type: flow`) trained alike on the same pairs (the train split of DATA),
# each sampled with several samplers and step counts from the same deformed training masks (same seed, so the
# same masks in every set). Mask fidelity of a set: the Dice of a U-Net trained on DATA's real train split, on the
# generated image, against the mask it was conditioned on. Network evaluations per image = steps x 2 (guided).
# Validation-style evidence (the generators' own training masks, no test pair is read), to choose a default on.
#   DATA=/tmp/sonosynth-scarce/hc18-data OMP_NUM_THREADS=1 benchmarks/bench_few_step.sh
# Resumable: finished runs and sets are kept under $WORK. Table: $WORK/few_step.md (benchmarks/few_step_table.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SONO="$PY -m sonosynth"
DATA=${DATA:?a split dataset, e.g. the one benchmarks/run_scarce.sh hc18 data writes}
WORK=${WORK:-/tmp/few-step}
STEPS=${STEPS:-1200}   # optimizer steps of each generator
N=${N:-64}             # pairs per synthetic set
SETS=${SETS:-"diffusion:dpm++:25 diffusion:dpm++:8 diffusion:dpm++:4 flow:euler:25 flow:euler:8 flow:euler:4 flow:dpm++:8 flow:dpm++:4"}
mkdir -p "$WORK"
printf 'warmup_steps: 20\n' > "$WORK/diffusion.yaml"
printf 'warmup_steps: 20\nprediction_type: flow\n' > "$WORK/flow.yaml"
for objective in diffusion flow; do
  run=$WORK/$objective
  if [ ! -d "$run/model" ]; then
    resume=(); [ -d "$run/checkpoints" ] && resume=(--resume)
    $SONO train "$DATA" --out "$run" --config "$WORK/$objective.yaml" --net-size small --size 64 --split train \
      --max-steps "$STEPS" --batch-size 8 --learning-rate 0.001 --seed 0 --device cpu "${resume[@]}"
  fi
done
if [ ! -f "$WORK/segmenter/model.safetensors" ]; then
  $SONO segment train "$DATA" --out "$WORK/segmenter" --net-size small --size 64 --seed 0 --device cpu --overwrite
fi
for set in $SETS; do
  IFS=: read -r objective scheduler steps <<< "$set"
  out=$WORK/sets/$objective-$scheduler-$steps
  if [ ! -f "$out/manifest.csv" ]; then
    start=$(date +%s.%N)
    $SONO generate "$WORK/$objective" --source "$DATA" --mask-source deform --n "$N" --steps "$steps" \
      --scheduler "$scheduler" --segmenter "$WORK/segmenter" --seed 0 --device cpu --out "$out" --overwrite
    echo "$(date +%s.%N) - $start" | bc > "$out.seconds"
  fi
done
$PY benchmarks/few_step_table.py "$WORK" "$DATA" $SETS | tee "$WORK/few_step.md"
