#!/usr/bin/env bash
# The pretraining set of the generator-pretraining levers (run_ablation.sh's gen-pretrained, run_latent.sh's
# pretrained): BUSI and CAMUS-224 train+val pairs and 200 phantom fetal heads, hearts and breasts each, every
# structure as one label, in OUT/data (no HC18 image). Steps already done are skipped.
#   benchmarks/pretraining_data.sh OUT [PHANTOM_SIZE]   (default: each phantom domain's own size)
set -euo pipefail
cd "$(dirname "$0")/.."
SONO=${SONO:-.venv/bin/sonosynth}
WORK=${WORK:-/tmp/sonosynth-scarce}
OUT=${1:?usage: benchmarks/pretraining_data.sh OUT [PHANTOM_SIZE]}
SIZE=() && [ -z "${2:-}" ] || SIZE=(--size "$2")
mkdir -p "$OUT"
for dataset in busi camus-224; do
  [ -f "$WORK/$dataset-data/manifest.csv" ] || WORK=$WORK benchmarks/run_scarce.sh "$dataset" data
done
for domain in fetal-head cardiac breast; do
  [ -f "$OUT/phantom-$domain/manifest.csv" ] ||
    $SONO data phantom "$OUT/phantom-$domain" --domain "$domain" --n 200 --seed 0 "${SIZE[@]}"
done
[ -f "$OUT/data/manifest.csv" ] ||
  $SONO data merge "$WORK/busi-data" "$WORK/camus-224-data" "$OUT"/phantom-* --out "$OUT/data" \
    --splits train,val, --foreground structure
