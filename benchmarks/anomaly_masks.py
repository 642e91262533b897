"""The picture of docs/synthesis.md's anomalies: real BUSI benign lesions, each edited into every named anomaly.

    python benchmarks/anomaly_masks.py --busi ../shared/data/busi/Dataset_BUSI_with_GT \\
        --out docs/images/anomaly_masks.png [--n 4] [--seed 0]

Rows: `--n` benign masks of the published BUSI folder (its first files in name order, each cropped around its
lesion); columns: the mask as annotated, then `spiculated`, `angular`, `microlobulated`, `taller-than-wide` and
`spiculated+taller-than-wide` (`synthesis/masks/anomaly.py`, seeded), the added area in orange.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLUMNS = ("as annotated", "spiculated", "angular", "microlobulated", "taller-than-wide",
           "spiculated+taller-than-wide")
TILE = 160


def lesion_crop(mask: np.ndarray, margin: float = 0.8) -> np.ndarray:
    """The mask cropped to a square around its lesion, `margin` x the lesion's size on each side."""
    ys, xs = np.nonzero(mask)
    centre = np.array([ys.mean(), xs.mean()])
    half = int(max(np.ptp(ys), np.ptp(xs)) * (0.5 + margin))
    padded = np.pad(mask, half)
    y, x = (centre + half).astype(int)
    return padded[y - half:y + half, x - half:x + half]


def tile(original: np.ndarray, edited: np.ndarray) -> Image.Image:
    rgb = np.zeros((*original.shape, 3), np.uint8)
    rgb[original > 0] = (235, 235, 235)
    rgb[(edited > 0) & (original == 0)] = (255, 140, 0)
    rgb[(edited == 0) & (original > 0)] = (90, 90, 90)
    return Image.fromarray(rgb).resize((TILE, TILE), Image.NEAREST)


def main() -> None:
    from sonosynth.data.imageio import read_label_map
    from sonosynth.synthesis.masks.anomaly import make_anomaly

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busi", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = sorted((args.busi / "benign").glob("*_mask.png"))[: args.n]
    header = 28
    sheet = Image.new("RGB", (TILE * len(COLUMNS), header + TILE * len(files)), "black")
    draw = ImageDraw.Draw(sheet)
    for column, name in enumerate(COLUMNS):
        draw.text((column * TILE + 4, 8), name, fill="white")
    for row, path in enumerate(files):
        mask = lesion_crop((read_label_map(path) > 0).astype(np.uint8))
        for column, name in enumerate(COLUMNS):
            edited = mask if column == 0 else make_anomaly(mask, name, np.random.default_rng(args.seed + row))
            sheet.paste(tile(mask, edited), (column * TILE, header + row * TILE))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({len(files)} lesions: {', '.join(p.name for p in files)})")


if __name__ == "__main__":
    main()
