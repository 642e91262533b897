#!/usr/bin/env bash
# Real-data (HC18) measurements for issues 4, 5 and 6, on the CPU, exactly as recorded in
# docs/results/hc18/README.md. Outputs go under $WORK (default /tmp), never into the repository.
#   benchmarks/run_hc18.sh [STAGE ...]   stages: data train segmenter generate fidelity downstream (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SONO="$PY -m sonosynth"
HC18=${HC18:-/work/shared/data/hc18}
WORK=${WORK:-/tmp}
DATA=$WORK/hc18-data
RUN=$WORK/hc18-run
TRAIN_MINUTES=${TRAIN_MINUTES:-50}   # wall-clock budget of the diffusion training (the issue allows 60 on a CPU)
RESUME=${RESUME:-0}                  # 1: continue RUN from its latest checkpoint (TRAIN_MINUTES=0: one step, then save)
STAGES=${*:-data train segmenter generate fidelity downstream}

has() { [[ " $STAGES " == *" $1 "* ]]; }

if has data; then
  $SONO data import hc18 "$HC18" "$DATA" --overwrite
  $SONO data split "$DATA" --by subject --val 0.15 --test 0.15 --seed 0
  $SONO data check "$DATA"
fi

if has train; then
  # `sonosynth train` has no wall-clock limit, so the training API's on_step hook stops it after
  # TRAIN_MINUTES; the last step then writes its checkpoint, sample grid and RUN/model like max_steps would.
  $PY - "$DATA" "$RUN" "$TRAIN_MINUTES" "$RESUME" <<'PYEOF'
import sys, time
from sonosynth.diffusion.train import TrainConfig, train, with_model_size

data, run, minutes, resume = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
config = TrainConfig(dataset=data, image_size=64, batch_size=8, lr=1e-3, warmup_steps=20, max_steps=400,
                     checkpoint_every=50, sample_every=50, num_samples=4, seed=0)
config.model = with_model_size(config.model, "small", "spade")
deadline = time.perf_counter() + minutes * 60
result = train(config, run, resume=resume, on_step=lambda step, loss: time.perf_counter() > deadline)
print(f"trained to step {result.step} in {result.seconds:.0f} s "
      f"({result.step / result.seconds:.4f} steps/s, {8 * result.step / result.seconds:.3f} images/s)")
PYEOF
fi

if has segmenter; then
  # The segmenter that scores mask fidelity: trained on the real train split only (val split for early stopping).
  $SONO segment train "$DATA" --out "$WORK/hc18-seg" --size 64 --net small --steps 150 --val-every 50 --patience 3 \
    --seed 0 --overwrite
fi

RESULTS=docs/results/hc18
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
    $SONO generate "$RUN" --source "$DATA" --masks "$source" --n "$GEN_N" --steps "$GEN_STEPS" --seed 0 \
      --segmenter "$WORK/hc18-seg" --out "$WORK/synth-hc18-$source" --overwrite
  done
fi

if has fidelity; then
  # Mask fidelity: Dice between each conditioning mask and the real-trained segmenter's prediction on the
  # generated image (the `fidelity_dice` column `generate --segmenter` writes); one PNG grid per source.
  $PY - "$WORK" "$RESULTS" $SOURCES <<'PYEOF'
import csv, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sonosynth.data.format import Dataset

work, results, sources = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
lines = ["| mask source | pairs | fidelity Dice mean | std | min | median |", "|---|---|---|---|---|---|"]
for source in sources:
    folder = work / f"synth-hc18-{source}"
    dataset = Dataset.open(folder)
    rows = list(csv.DictReader(open(folder / "manifest.csv")))
    dice = np.array([float(r["fidelity_dice"]) for r in rows if r.get("fidelity_dice")])
    lines.append(f"| {source} | {len(rows)} | {dice.mean():.3f} | {dice.std():.3f} | {dice.min():.3f} | "
                 f"{np.median(dice):.3f} |")
    shown = min(8, len(dataset))
    fig, axes = plt.subplots(2, 2 * ((shown + 1) // 2), figsize=(2 * shown, 4), dpi=64)
    for i in range(shown):
        sample = dataset[i]
        ax_mask, ax_image = axes[i % 2, 2 * (i // 2)], axes[i % 2, 2 * (i // 2) + 1]
        ax_mask.imshow(sample.mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax_image.imshow(sample.image, cmap="gray", vmin=0, vmax=255)
        ax_image.set_title(f"Dice {dice[i]:.2f}" if i < len(dice) else "", fontsize=8)
        ax_mask.set_title("mask", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"HC18 small model, --masks {source}: mask | generated image (64 px)", fontsize=9)
    fig.tight_layout()
    fig.savefig(results / f"generated_{source}.png")
    plt.close(fig)
table = "\n".join(lines)
(results / "mask_fidelity.md").write_text(table + "\n")
print(table)
PYEOF
fi
