#!/usr/bin/env bash
# The honest scarce-data protocol on a real dataset, exactly as recorded in docs/results/<dataset>/:
# import -> subject-wise split (most remaining subjects in test, a few-shot-sized val) -> for every k and
# seed a generator trained on those k subjects only -> five arms (real, real+classical, real+synthetic,
# real+synthetic+classical, synthetic) -> paired intervals and verdicts.
#   benchmarks/run_scarce.sh hc18|busi|camus-224 [STAGE ...]   stages: data run report copy (default: all)
# Outputs go under $WORK (default /tmp/sonosynth-scarce); the report is resumable (rerun to continue; `run`
# first restores the cells committed in docs/results/<dataset>/cells), `report` writes the report of the
# cells finished so far (while `run` goes on elsewhere) and `copy` puts the tables, plots and cell records of
# the complete (k, seed) groups into docs/results/<dataset>/.
# Another recipe on the same data and split: RECIPE=benchmarks/scarce/X.yaml RESULT=<name> (report $WORK/<name>-report,
# results docs/results/<name>/), optionally ARMS=real,real+classical,... (default all five) and K=..., SEEDS=....
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: benchmarks/run_scarce.sh hc18|busi|camus-224 [STAGE ...]}; shift
STAGES=${*:-data run report copy}
SONO=${SONO:-.venv/bin/sonosynth}
SRC=${SONOSYNTH_DATA_DIR:-../shared/data}
WORK=${WORK:-/tmp/sonosynth-scarce}
DATA=$WORK/$NAME-data
RESULT=${RESULT:-$NAME}
RECIPE=${RECIPE:-benchmarks/scarce/$NAME.yaml}
REPORT=$WORK/$RESULT-report
RESULTS=docs/results/$RESULT
SEEDS=${SEEDS:-3}
ARMS=${ARMS:-real,real+classical,real+synthetic,real+synthetic+classical,synthetic}
has() { [[ " $STAGES " == *" $1 "* ]]; }

case $NAME in
  hc18)  # ~400 subjects: 80 % test, 5 % val (20 subjects), the rest a pool for k <= 25
    IMPORT=(hc18 "$SRC/hc18"); SPLIT=(--val 0.05 --test 0.8); K=${K:-5,10,20}; EXTRA=() ;;
  busi)  # no patient ids: an image (near-duplicate group) is a subject; k = 25 and 100 images
    IMPORT=(busi "$SRC/busi/Dataset_BUSI_with_GT"); SPLIT=(--val 0.08 --test 0.62); K=${K:-25,100}; EXTRA=() ;;
  camus-224)  # 400 patients x 4 images: 50 % test (200 patients), 5 % val (20 patients)
    IMPORT=(folder "$SRC/camus-224" --images 'images/*_E[DS].png' --masks 'images/{stem}_gt.png'
            --labels 'LV cavity,LV myocardium,left atrium'
            --name-pattern '(?P<subject>patient\d+)_(?P<view>2CH|4CH)_(?P<phase>ED|ES)')
    SPLIT=(--val 0.05 --test 0.5); K=${K:-5,10,25}
    EXTRA=(--structure 'LV endocardium=1' --structure 'LV epicardium=1+2' --structure 'left atrium=3') ;;
  *) echo "unknown dataset $NAME" >&2; exit 2 ;;
esac

mkdir -p "$WORK"
ARGS=(--real "$DATA" --out "$REPORT" --generator-per-k "$RECIPE" --k "$K" --seeds "$SEEDS" --arms "$ARMS"
      "${EXTRA[@]}")
if has data && [ ! -f "$DATA/manifest.csv" ]; then
  $SONO data import "${IMPORT[0]}" "${IMPORT[1]}" "$DATA" "${IMPORT[@]:2}"
  $SONO data split "$DATA" --by subject "${SPLIT[@]}" --seed 0
  $SONO data check "$DATA"
fi

if has run; then
  if [ -d "$RESULTS/cells" ]; then  # continue from the committed cells (same settings) on any machine
    mkdir -p "$REPORT/cells"
    [ -f "$REPORT/settings.json" ] || cp "$RESULTS/settings.json" "$REPORT/settings.json"
    for cell in "$RESULTS/cells/"*.json; do [ -e "$REPORT/cells/${cell##*/}" ] || cp "$cell" "$REPORT/cells/"; done
  fi
  $SONO evaluate downstream "${ARGS[@]}"
fi

if has report; then
  $SONO evaluate downstream "${ARGS[@]}" --report-only
fi

if has copy; then
  # Commit only complete (k, seed) groups (every arm), so every row of the tables compares like with like:
  # the report is rebuilt from those cells in $WORK/$RESULT-complete (generators linked), then copied.
  COMPLETE=$WORK/$RESULT-complete
  N_ARMS=$(tr ',' '\n' <<< "$ARMS" | wc -l)
  rm -rf "$COMPLETE" && mkdir -p "$COMPLETE/cells"
  cp "$REPORT/settings.json" "$COMPLETE/" && ln -s "$REPORT/generators" "$COMPLETE/generators"
  for group in $(ls "$REPORT/cells" | sed -E 's/^(k[^_]+)__.*__(seed[0-9]+)\.json$/\1__*__\2.json/' | sort | uniq -c \
                 | awk -v n="$N_ARMS" '$1 == n {print $2}'); do
    cp "$REPORT"/cells/$group "$COMPLETE/cells/"
  done
  $SONO evaluate downstream "${ARGS[@]/#$REPORT/$COMPLETE}" --report-only
  rm -rf "$RESULTS/cells" && mkdir -p "$RESULTS/cells"
  cp "$COMPLETE"/results.csv "$COMPLETE"/comparisons.csv "$COMPLETE"/dice_vs_k.png "$COMPLETE"/samples.png \
     "$COMPLETE"/settings.json "$RESULTS"/
  sed "s#$COMPLETE#$REPORT#g" "$COMPLETE/results.md" > "$RESULTS/results.md"
  cp "$COMPLETE"/cells/*.json "$RESULTS/cells/"
fi
