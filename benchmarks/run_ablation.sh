#!/usr/bin/env bash
# Issue 13's ablation on HC18 with the honest protocol: which lever makes synthetic pairs help a converged
# segmenter? One report per lever under $WORK/hc18-ablation/<lever>, all sharing the per-k generators of
# $WORK/hc18-ablation/generators (trained once per k and seed on those k subjects only; a sampling lever samples
# them its own way; a lever that trains its generator differently has its own store, the LEVERS' last field).
# `base` runs the four arms of the scarce protocol; a lever runs its synthetic arm(s) only and is compared with
# base's `real` and `real+classical` cells of the same k and seed (same subjects, same test images).
#   benchmarks/run_ablation.sh run K [K ...]   seeds FROM_SEED..SEEDS-1 (default 0..2), seed-major: every lever at
#                                              the first seed first
#   benchmarks/run_ablation.sh pretrain        the generator of lever gen-pretrained (BUSI, CAMUS-224, phantom)
#   benchmarks/run_ablation.sh table           the ablation table (benchmarks/scarce/ablation.py) of the cells so far
#   benchmarks/run_ablation.sh copy            cells and table into docs/results/hc18-ablation/ (cells/<lever>/, table.md)
# Resumable: rerun to continue; `run` first restores the cells committed in docs/results/hc18-ablation/cells.
# Run one process per k on a 2-core machine (OMP_NUM_THREADS=1 each): `run 5 &` and `run 20 &`.
# A designed shift: SHIFT='hc_mm<150' trains and validates on that group only (`--train-where`), tests on all; its
# reports, generators and results live apart ($WORK/hc18-shift, docs/results/hc18-shift).
set -euo pipefail
cd "$(dirname "$0")/.."
SONO=${SONO:-.venv/bin/sonosynth}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per process: two processes share two cores
WORK=${WORK:-/tmp/sonosynth-scarce}
DATA=$WORK/hc18-data
SHIFT=${SHIFT:-}
NAME=hc18-ablation && [ -z "$SHIFT" ] || NAME=hc18-shift
ABLATION=$WORK/$NAME
RESULTS=docs/results/$NAME
SEEDS=${SEEDS:-3}
FROM_SEED=${FROM_SEED:-0}  # run seeds FROM_SEED..SEEDS-1 only (e.g. 2 when the generators of seeds 0-1 are gone)
ONLY=${ONLY:-}  # a space-separated list of levers: run only these (e.g. to confirm the best ones at more seeds)
# lever | generator recipe | downstream options | arms [| generator store, default generators: the shared one]
LEVERS=(  # in the order they run (the first ones are the ones a short session gets to)
  "base|ablation/hc18-base.yaml||real,real+classical,real+synthetic+classical"
  "hc-widen|ablation/hc18-hc-widen.yaml||real+synthetic+classical"
  "size-widen|ablation/hc18-size-widen.yaml||real+synthetic+classical"
  "pretrain|ablation/hc18-base.yaml|--synthetic-schedule pretrain|real+synthetic+classical"
  "hc-widen+pretrain|ablation/hc18-hc-widen.yaml|--synthetic-schedule pretrain|real+synthetic+classical"
  "guidance1|ablation/hc18-guidance1.yaml||real+synthetic+classical"
  "filter0.8|ablation/hc18-filter0.8.yaml||real+synthetic+classical"
  "shape|ablation/hc18-shape.yaml||real+synthetic+classical"
  "train-masks|ablation/hc18-train.yaml||real+synthetic+classical"
  "pairs1000|ablation/hc18-pairs1000.yaml||real+synthetic+classical"
  "ratio0.75|ablation/hc18-base.yaml|--synthetic-ratio 0.75|real+synthetic+classical"
  "guidance3|ablation/hc18-guidance3.yaml||real+synthetic+classical"
  "deform|ablation/hc18-deform.yaml||real+synthetic+classical"
  "shape+hc-widen|ablation/hc18-shape-hc-widen.yaml||real+synthetic+classical"
  "gen-long|ablation/hc18-gen-long.yaml|--max-steps 8000|real+synthetic+classical|generators-gen-long"
  "gen-medium|ablation/hc18-gen-medium.yaml||real+synthetic+classical|generators-gen-medium"
  "gen-base|ablation/hc18-gen-base.yaml||real+synthetic+classical|generators-gen-base"
  "gen-pretrained|ablation/hc18-gen-pretrained.yaml||real+synthetic+classical|generators-gen-pretrained"
  "gen-pretrained+hc-widen|ablation/hc18-gen-pretrained-hc-widen.yaml||real+synthetic+classical|generators-gen-pretrained"
)
GPU_LEVERS=" gen-base "  # run only when ONLY names them: `base` trains ~23x slower than `small` on a CPU (11 s/step)
STAGE=${1:?usage: benchmarks/run_ablation.sh run K [K ...] | pretrain | table | copy}; shift
PRETRAINED=$WORK/pretrained-generator  # gen-pretrained's starting point: shared by the ablation and the shift

pretrain() {  # a generator on other ultrasound only (no HC18 image): BUSI and CAMUS-224 train+val, phantom
  [ -f "$PRETRAINED/run/model/model_index.json" ] && return
  WORK=$WORK SONO=$SONO benchmarks/pretraining_data.sh "$PRETRAINED"
  printf 'warmup_steps: 20\n' > "$PRETRAINED/train.yaml"  # the per-k generators' settings (GeneratorRecipe)
  resume=() && [ -d "$PRETRAINED/run/checkpoints" ] && resume=(--resume)
  $SONO train "$PRETRAINED/data" --out "$PRETRAINED/run" --config "$PRETRAINED/train.yaml" --kind spade \
    --net-size small --size 64 --max-steps 4000 --batch-size 8 --learning-rate 0.001 --split all "${resume[@]}"
}

recipe_file() {  # a recipe naming $WORK gets this run's WORK (written beside the reports)
  local recipe=benchmarks/scarce/$1
  grep -q '\$WORK' "$recipe" || { echo "$recipe"; return; }
  mkdir -p "$ABLATION/recipes" && sed "s#\$WORK#$WORK#g" "$recipe" > "$ABLATION/recipes/${1##*/}"
  echo "$ABLATION/recipes/${1##*/}"
}

case $STAGE in
  run)
    [ -f "$DATA/manifest.csv" ] || benchmarks/run_scarce.sh hc18 data
    for seed in $(seq $((FROM_SEED + 1)) "$SEEDS"); do  # seed-major: the plan grows one seed at a time
      for entry in "${LEVERS[@]}"; do
        IFS='|' read -r lever recipe options arms store <<< "$entry"
        if [ -n "$ONLY" ] && [[ " base $ONLY " != *" $lever "* ]]; then continue; fi
        if [ -z "$ONLY" ] && [[ $GPU_LEVERS == *" $lever "* ]]; then continue; fi
        out=$ABLATION/$lever
        [[ $store != *pretrained* ]] || pretrain
        if [ -d "$RESULTS/cells/$lever" ]; then
          mkdir -p "$out/cells"
          for cell in "$RESULTS/cells/$lever/"k*.json; do  # cells only: a committed settings.json stays in docs
            # (the other k's process may copy the same cell at the same moment)
            [ -e "$out/cells/${cell##*/}" ] || cp "$cell" "$out/cells/" 2>/dev/null || [ -e "$out/cells/${cell##*/}" ]
          done
        fi
        for k in "$@"; do
          # shellcheck disable=SC2086  # options are words
          $SONO evaluate downstream --real "$DATA" --out "$out" --generators "$ABLATION/${store:-generators}" \
            --generator-per-k "$(recipe_file "$recipe")" --k "$k" --seeds "$seed" --only-seeds $((seed - 1)) --arms "$arms" $options \
            ${SHIFT:+--train-where "$SHIFT"}
        done
      done
    done ;;
  pretrain)
    pretrain ;;
  table)
    .venv/bin/python benchmarks/scarce/ablation.py "$ABLATION" ;;
  copy)
    for entry in "${LEVERS[@]}"; do
      lever=${entry%%|*}
      if [ -d "$ABLATION/$lever/cells" ] && ls "$ABLATION/$lever/cells/"*.json > /dev/null 2>&1; then
        mkdir -p "$RESULTS/cells/$lever" && cp "$ABLATION/$lever/cells/"*.json "$RESULTS/cells/$lever/"
        cp "$ABLATION/$lever/settings.json" "$RESULTS/cells/$lever/settings.json"
      fi
    done
    .venv/bin/python benchmarks/scarce/ablation.py "$RESULTS/cells" --markdown "$RESULTS/table.md" ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
