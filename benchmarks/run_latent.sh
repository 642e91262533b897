#!/usr/bin/env bash
# HC18 at 256 px with latent diffusion (issue 15), as recorded in docs/results/hc18-latent-256/:
#   [ARMS=...] benchmarks/run_latent.sh downstream SEED [SIZE NET_SIZE]   the k = 20 real and real+synthetic arms (or ARMS) of one seed,
#       generator per cell from benchmarks/scarce/hc18-latent256.yaml; segmenters at SIZE px (default 128) of
#       NET_SIZE (default small); every SIZE/NET_SIZE shares the seed's generator (the same pairs)
#   benchmarks/run_latent.sh pretrain           autoencoder and denoiser on other ultrasound only (BUSI and CAMUS-224
#       train+val, phantom fetal heads, hearts and breasts; every structure as one label): no HC18 image
#   [ARMS=...] benchmarks/run_latent.sh pretrained SEED [SIZE NET_SIZE]   real+synthetic (or ARMS) with the same recipe fine-tuned from
#       the pretrained autoencoder and denoiser (hc18-latent256-pretrained.yaml): the same steps per cell
#   benchmarks/run_latent.sh copy               the cells into docs/results/hc18-latent-256/cells/
# Resumable: rerun to continue. One process per core on a 2-core machine (OMP_NUM_THREADS=1 each).
set -euo pipefail
cd "$(dirname "$0")/.."
SONO=${SONO:-.venv/bin/sonosynth}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORK=${WORK:-/tmp/sonosynth-scarce}
DATA=$WORK/hc18-data
LATENT=$WORK/hc18-latent-256
PRETRAINED=$WORK/latent-pretrained
RESULTS=docs/results/hc18-latent-256
STAGE=${1:?usage: benchmarks/run_latent.sh downstream|pretrained SEED [SIZE NET_SIZE] | pretrain | copy}; shift

pretrain() {
  [ -f "$PRETRAINED/denoiser/model/model_index.json" ] && return
  WORK=$WORK SONO=$SONO benchmarks/pretraining_data.sh "$PRETRAINED" 256
  # the per-k recipe's autoencoder schedule (patches, then the decoder on whole images), on every merged image
  printf 'split: all\n' > "$PRETRAINED/autoencoder.yaml"
  [ -f "$PRETRAINED/ae/model/config.json" ] || {
    resume=() && [ -d "$PRETRAINED/ae/checkpoints" ] && resume=(--resume)
    $SONO autoencoder train "$PRETRAINED/data" --out "$PRETRAINED/ae" --config "$PRETRAINED/autoencoder.yaml" \
      --size 256 --patch-size 64 --batch-size 8 --learning-rate 2e-4 --max-steps 2400 --adversarial-start 400 \
      "${resume[@]}"; }
  [ -f "$PRETRAINED/ae-whole/model/config.json" ] || {
    resume=() && [ -d "$PRETRAINED/ae-whole/checkpoints" ] && resume=(--resume)
    $SONO autoencoder train "$PRETRAINED/data" --out "$PRETRAINED/ae-whole" --config "$PRETRAINED/autoencoder.yaml" \
      --init "$PRETRAINED/ae" --decoder-only --size 256 --patch-size 0 --batch-size 2 --learning-rate 1e-4 \
      --max-steps 300 --adversarial-start 50 "${resume[@]}"; }
  # latent_views 2: ~1500 images x 8 views would take ~30 min to encode on one core
  printf 'warmup_steps: 100\nlatent_views: 2\n' > "$PRETRAINED/train.yaml"
  resume=() && [ -d "$PRETRAINED/denoiser/checkpoints" ] && resume=(--resume)
  $SONO train "$PRETRAINED/data" --out "$PRETRAINED/denoiser" --config "$PRETRAINED/train.yaml" \
    --autoencoder "$PRETRAINED/ae-whole" --kind spade --net-size small --size 256 --max-steps 4000 --batch-size 8 \
    --learning-rate 0.001 --split all "${resume[@]}"
}

downstream() {  # REPORT RECIPE ARMS SEED SIZE NET_SIZE
  local report=$1 recipe=$2 arms=$3 seed=$4 size=$5 net=$6
  mkdir -p "$LATENT/recipes"
  sed "s#\$WORK#$WORK#g" "benchmarks/scarce/$recipe" > "$LATENT/recipes/$recipe"
  $SONO evaluate downstream --real "$DATA" --out "$LATENT/$report-seg$size-$net" --generators "$LATENT/$report-generators" \
    --generator-per-k "$LATENT/recipes/$recipe" --k 20 --seeds $((seed + 1)) --only-seeds "$seed" --arms "$arms" \
    --size "$size" --net-size "$net" --max-steps 4000 --val-every 100 --patience 5
}

case $STAGE in
  downstream)
    [ -f "$DATA/manifest.csv" ] || benchmarks/run_scarce.sh hc18 data
    downstream scratch hc18-latent256.yaml "${ARMS:-real,real+synthetic}" "${1:?seed}" "${2:-128}" "${3:-small}" ;;
  pretrain)
    pretrain ;;
  pretrained)
    pretrain
    downstream pretrained hc18-latent256-pretrained.yaml "${ARMS:-real+synthetic}" "${1:?seed}" "${2:-128}" "${3:-small}" ;;
  copy)
    for report in "$LATENT"/*-seg*; do
      [ -d "$report/cells" ] || continue
      name=${report##*/}
      mkdir -p "$RESULTS/cells/$name" && cp "$report/cells/"*.json "$report/settings.json" "$RESULTS/cells/$name/"
    done ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
