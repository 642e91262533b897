#!/usr/bin/env bash
# Real-data (HC18) measurements for issues 4, 5 and 6, on the CPU, exactly as recorded in
# docs/results/hc18-shared-generator/README.md (a generator trained on the whole train split: not a scarce-data result; the honest protocol is benchmarks/run_scarce.sh). Outputs go under $WORK (default /tmp), never into the repository.
#   benchmarks/run_hc18.sh [STAGE ...]   stages: data train segmenter plots generate fidelity combine downstream report [downstream-real] (default: all but downstream-real)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SONO="$PY -m sonosynth"
HC18=${HC18:-${SONOSYNTH_DATA_DIR:-../shared/data}/hc18}
WORK=${WORK:-/tmp}
DATA=$WORK/hc18-data
RUN=$WORK/hc18-run
TRAIN_MINUTES=${TRAIN_MINUTES:-60}   # wall-clock budget of the diffusion training (the issue allows 60 on a CPU)
MAX_STEPS=${MAX_STEPS:-1200}         # optimizer steps, when the wall-clock budget does not stop it first
RESUME=${RESUME:-0}                  # 1: continue RUN from its latest checkpoint (TRAIN_MINUTES=0: one step, then save)
STAGES=${*:-data train segmenter plots generate fidelity combine downstream report}

has() { [[ " $STAGES " == *" $1 "* ]]; }

if has data; then
  $SONO data import hc18 "$HC18" "$DATA" --overwrite
  $SONO data split "$DATA" --by subject --val 0.15 --test 0.15 --seed 0
  $SONO data check "$DATA"
fi

if has train; then
  # `sonosynth train` has no wall-clock limit, so the training API's on_step hook stops it after
  # TRAIN_MINUTES; the last step then writes its checkpoint, sample grid and RUN/model like max_steps would.
  $PY - "$DATA" "$RUN" "$TRAIN_MINUTES" "$RESUME" "$MAX_STEPS" <<'PYEOF'
import sys, time
from sonosynth.diffusion.config import TrainConfig, with_model_size
from sonosynth.diffusion.train import train

data, run, minutes, resume = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
max_steps = int(sys.argv[5])
config = TrainConfig(dataset=data, size=64, batch_size=8, learning_rate=1e-3, warmup_steps=20, max_steps=max_steps,
                     checkpoint_every=max(50, max_steps // 6), sample_every=max(50, max_steps // 3), num_samples=4,
                     seed=0)
config.model = with_model_size(config.model, "small", "spade")
deadline = time.perf_counter() + minutes * 60
result = train(config, run, resume=resume, on_step=lambda step, loss: time.perf_counter() > deadline)
print(f"trained to step {result.step} in {result.seconds:.0f} s "
      f"({result.step / result.seconds:.4f} steps/s, {8 * result.step / result.seconds:.3f} images/s)")
PYEOF
fi

if has segmenter; then
  # The segmenter that scores mask fidelity: trained on the real train split only (val split for early stopping).
  $SONO segment train "$DATA" --out "$WORK/hc18-seg" --size 64 --net-size small --max-steps 150 --val-every 50 --patience 3 \
    --seed 0 --overwrite
fi

RESULTS=docs/results/hc18-shared-generator
SOURCES=${SOURCES:-train deform shape}
GEN_N=${GEN_N:-16}          # pairs per mask source
GEN_STEPS=${GEN_STEPS:-10}  # DPM++ steps (the CPU cannot afford more here)

if has plots; then
  # Training curve (RUN/loss.csv) and the last sample grid the training wrote.
  $PY - "$RUN" "$RESULTS" <<'PYEOF'
import csv, shutil, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

run, results = Path(sys.argv[1]), Path(sys.argv[2])
rows = list(csv.DictReader(open(run / "loss.csv")))
steps = np.array([int(r["step"]) for r in rows])
loss = np.array([float(r["loss"]) for r in rows])
fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
ax.plot(steps, loss, lw=0.8, alpha=0.5, label="per step")
if len(loss) >= 10:
    ax.plot(steps[9:], np.convolve(loss, np.ones(10) / 10, mode="valid"), lw=1.5, label="mean of 10")
ax.set_xlabel("optimizer step (batch 8)")
ax.set_ylabel("v-prediction MSE")
ax.set_title("HC18, small spade model, 64 px, CPU")
ax.legend()
fig.tight_layout()
fig.savefig(results / "training_loss.png")
grids = sorted((run / "samples").glob("step-*.png"))
for grid in grids:
    shutil.copy(grid, results / f"training_samples_{grid.stem}.png")
print("loss rows:", len(rows), "grids:", [g.name for g in grids])
PYEOF
fi

if has generate; then
  for source in $SOURCES; do
    OMP_NUM_THREADS=1 $PY -m sonosynth generate "$RUN" --source "$DATA" --mask-source "$source" --n "$GEN_N" \
      --steps "$GEN_STEPS" --seed 0 --out "$WORK/synth-hc18-$source" --overwrite &
  done
  wait
fi

if has fidelity; then
  # Mask fidelity: Dice between each conditioning mask and the real-trained segmenter's prediction on the
  # written (64 px) generated image; the reference row scores real test pairs reduced to the same size.
  $PY - "$WORK" "$RESULTS" "$DATA" $SOURCES <<'PYEOF'
import sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sonosynth.data.format import Dataset
from sonosynth.synthesis.fidelity import score_samples, segmenter_predictor
from sonosynth.synthesis.grid import reduce_image, reduce_mask

work, results, data, sources = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
predict, num_labels = segmenter_predictor(work / "hc18-seg")
lines = ["| mask source | pairs | fidelity Dice mean | std | min | median |", "|---|---|---|---|---|---|"]

def row(name, images, masks):
    dice = np.array(score_samples(images, masks, predict, num_labels))
    lines.append(f"| {name} | {len(dice)} | {dice.mean():.3f} | {dice.std():.3f} | {dice.min():.3f} | "
                 f"{np.median(dice):.3f} |")
    return dice

test = Dataset.open(data).subset("test")
row("real test pairs (reference), 64 px", [reduce_image(s.image, 64) for s in test],
    [reduce_mask(s.mask, 64) for s in test])
for source in sources:
    dataset = Dataset.open(work / f"synth-hc18-{source}")
    samples = list(dataset)
    dice = row(source, [s.image for s in samples], [s.mask for s in samples])
    shown = min(8, len(samples))
    fig, axes = plt.subplots(2, 2 * ((shown + 1) // 2), figsize=(2 * shown, 4), dpi=64)
    for i in range(shown):
        sample = samples[i]
        ax_mask, ax_image = axes[i % 2, 2 * (i // 2)], axes[i % 2, 2 * (i // 2) + 1]
        ax_mask.imshow(sample.mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax_image.imshow(sample.image, cmap="gray", vmin=0, vmax=255)
        ax_image.set_title(f"Dice {dice[i]:.2f}" if i < len(dice) else "", fontsize=8)
        ax_mask.set_title("mask", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"HC18 small model, --mask-source {source}: mask | generated image (64 px)", fontsize=9)
    fig.tight_layout()
    fig.savefig(results / f"generated_{source}.png")
    plt.close(fig)
table = "\n".join(lines)
(results / "mask_fidelity.md").write_text(table + "\n")
print(table)
PYEOF
fi

if has combine; then
  # The synthetic set of the downstream arm: the deform and shape pairs together (new masks, not copies of train masks).
  $PY - "$WORK/synth-hc18" "$WORK/synth-hc18-deform" "$WORK/synth-hc18-shape" <<'PYEOF'
import sys
from sonosynth.data.format import Dataset, DatasetWriter

out, parts = sys.argv[1], [Dataset.open(p) for p in sys.argv[2:]]
with DatasetWriter(out, parts[0].info, overwrite=True) as writer:
    for part in parts:
        for sample in part:
            r = sample.record
            writer.add(f"{part.root.name}-{r.id}", sample.image, sample.mask, subject=r.subject, split=r.split,
                       spacing_mm=r.spacing_mm, extra=r.extra, **r.attributes)
print(out, sum(len(p) for p in parts), "pairs")
PYEOF
fi

# Downstream (issue 6): the real+synthetic arm with exactly the settings of the committed real-only arm
# (docs/results/hc18-downstream-64px: k=5,20, 3 seeds, small U-Net at 64 px, <= 800 steps, patience 3,
# one thread), so the two tables compare cell for cell (same split procedure, same nested subject draws).
DS_ARGS=${DS_ARGS:---k 5,20 --seeds 3 --size 64 --net-size small --max-steps 800 --val-every 100 --patience 3}
SYNTH=${SYNTH:-$WORK/synth-hc18}

if has downstream-real; then
  OMP_NUM_THREADS=1 $SONO evaluate downstream --real "$DATA" --arms real $DS_ARGS --out "$WORK/hc18-downstream-real"
fi

if has downstream; then
  OMP_NUM_THREADS=1 $SONO evaluate downstream --real "$DATA" --synthetic "$SYNTH" --arms real+synthetic $DS_ARGS \
    --out "$WORK/hc18-downstream"
fi

if has report; then
  # One report with both arms: the committed real-only cells (same split, same settings, same code, see
  # docs/results/hc18-downstream-64px/settings.json) are copied in; the command then finds every cell done and
  # only writes results.md/csv and dice_vs_k.png.
  cp -n docs/results/hc18-downstream-64px/cells/k*__real__seed*.json "$WORK/hc18-downstream/cells/"
  OMP_NUM_THREADS=1 $SONO evaluate downstream --real "$DATA" --synthetic "$SYNTH" --arms real,real+synthetic $DS_ARGS \
    --out "$WORK/hc18-downstream"
  cp "$WORK/hc18-downstream/results.md" "$WORK/hc18-downstream/results.csv" "$WORK/hc18-downstream/dice_vs_k.png" $RESULTS/
fi
