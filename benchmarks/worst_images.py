"""Pictures of a baseline's worst test images, before and after: what the synthetic pairs change where it fails.

    .venv/bin/python benchmarks/worst_images.py REPORT --real DATASET --k 20 --seed 0 \
        --baseline real+classical --arm real+synthetic+classical [--n 8] [--selection 0.25] --out worst.png

Reads the two cells' per-image Dice (REPORT/cells), takes the `n` test images where the baseline scores lowest
(with `--selection F` only among the selection split's images: look at failures where levers are chosen, not where
they are claimed), predicts them again with both cells' saved U-Nets (REPORT/segmenters/<cell>/, kept since the
downstream runner saves them) and draws each image with the reference (green), the baseline's mask (red) and the
arm's (yellow), with both Dice values.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--real", required=True, type=Path, help="the real dataset the report was tested on")
    parser.add_argument("--k", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", default="real+classical")
    parser.add_argument("--arm", default="real+synthetic+classical")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--structure", default="1", help="the structure whose Dice ranks the images")
    parser.add_argument("--selection", type=float, default=0.0, help="rank only the selection split's images")
    parser.add_argument("--out", type=Path, default=Path("worst.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sonosynth.data.format import Dataset
    from sonosynth.evaluation.cells import Cell
    from sonosynth.evaluation.selection import selection_ids
    from sonosynth.segmentation.predict import load_segmenter, predict_masks

    cells = {arm: Cell(args.k, arm, args.seed).name for arm in (args.baseline, args.arm)}
    scores = {arm: {e["id"]: e["dice"].get(args.structure) for e in
                    json.loads((args.report / "cells" / f"{name}.json").read_text())["per_image"]}
              for arm, name in cells.items()}
    real = Dataset.open(args.real)
    test = [r for r in real.records if r.id in scores[args.baseline]]  # the images the cells were scored on
    allowed = selection_ids(test, args.selection) if args.selection else {r.id for r in test}
    ranked = sorted((d, i) for i, d in scores[args.baseline].items() if d is not None and i in allowed)
    picks = [i for _, i in ranked[: args.n]]
    samples = sorted(real.subset(ids=picks), key=lambda s: picks.index(s.record.id))
    predictions = {arm: predict_masks(load_segmenter(args.report / "segmenters" / name), [s.image for s in samples])
                   for arm, name in cells.items()}
    fig, axes = plt.subplots(1, len(samples), figsize=(2.6 * len(samples), 2.8), dpi=90, squeeze=False)
    for ax, sample, *masks in zip(axes[0], samples, *predictions.values(), strict=True):
        ax.imshow(sample.image, cmap="gray")
        for mask, colour in zip([sample.mask, *masks], ("lime", "red", "yellow"), strict=True):
            if np.asarray(mask).any():
                ax.contour(np.asarray(mask) > 0, levels=[0.5], colors=colour, linewidths=0.9)
        ax.set_title(f"{sample.record.id}\n{args.baseline}: {scores[args.baseline][sample.record.id]:.2f}\n"
                     f"{args.arm}: {scores[args.arm][sample.record.id]:.2f}", fontsize=6)
        ax.axis("off")
    fig.suptitle(f"k={args.k} seed {args.seed}: reference (green), {args.baseline} (red), {args.arm} (yellow)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"{args.out}: the {len(samples)} test images where {args.baseline} is worst")


if __name__ == "__main__":
    main()
