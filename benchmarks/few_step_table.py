"""The table of benchmarks/bench_few_step.sh: each synthetic set's mask fidelity, paired against the first set.

    python benchmarks/few_step_table.py WORK REAL SET [SET ...] [--grid PNG]    (SET: objective:scheduler:steps)

Fidelity is the manifest's `fidelity_dice` (the segmenter's Dice on each generated image against its mask); the
sets share their masks (same seed), so each set is compared with the first pair by pair: the mean difference in
Dice points with a 95 % bootstrap interval over pairs. Fidelity alone rewards blurry, cartoon-like images, so
the table also compares each set with the real training images (`--real DATA`, its train split, letterboxed to
64 px like the sets), with the weight-free measures of `evaluate quality`: the Wasserstein-1 distance of the
intensity histograms inside the field of view (x 100), the speckle SNR (median local mean / std) and the texture
KID (x 1000; texture descriptors, no pretrained weights).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def fidelity(folder: Path) -> dict[str, float]:
    with open(folder / "manifest.csv", newline="") as handle:
        return {row["id"]: float(row["fidelity_dice"]) for row in csv.DictReader(handle)}


def interval(differences: np.ndarray, seed: int = 0, draws: int = 10000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), (draws, len(differences)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def realism(folder: Path, real: dict[str, object]) -> str:
    """Intensity W1 x 100, speckle SNR and texture KID x 1000 of a dataset folder against the real reference."""
    from sonosynth.data.format import Dataset
    from sonosynth.evaluation.quality import (
        fov_masks,
        histogram_distances,
        intensity_statistics,
        kernel_distance,
        letterboxed_unit,
        texture_features,
    )

    dataset = Dataset.open(folder)
    images, fov = letterboxed_unit(dataset, 64), fov_masks(dataset, 64)
    stats = intensity_statistics(images, fov)
    w1 = histogram_distances(real["histogram"], stats["histogram"])["wasserstein"]
    kid, _ = kernel_distance(real["features"], texture_features(images), subsets=50, subset_size=50, seed=0)
    return f"{100 * w1:.2f} | {stats['speckle_snr']['mean']:.2f} | {1000 * kid:.1f}"


def reference(real_path: Path) -> dict[str, object]:
    from sonosynth.data.format import Dataset
    from sonosynth.evaluation.quality import fov_masks, intensity_statistics, letterboxed_unit, texture_features

    train = Dataset.open(real_path).subset(split="train")
    images = letterboxed_unit(train, 64)
    stats = intensity_statistics(images, fov_masks(train, 64))
    return {"histogram": stats["histogram"], "snr": stats["speckle_snr"]["mean"], "features": texture_features(images)}


def main(work: Path, sets: list[str], real_path: Path) -> str:
    real = reference(real_path)
    rows = [f"| objective | sampler | steps | network evaluations per image | mask fidelity (Dice) | vs first set "
            f"(points, 95 % CI) | seconds per image | intensity W1 x100 | speckle SNR (real {real['snr']:.2f}) | "
            "texture KID x1000 |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = None
    for spec in sets:
        objective, scheduler, steps = spec.split(":")
        folder = work / "sets" / f"{objective}-{scheduler}-{steps}"
        scores = fidelity(folder)
        seconds = float((work / "sets" / f"{folder.name}.seconds").read_text()) / len(scores)
        ids = sorted(scores)
        values = np.array([scores[i] for i in ids])
        if base is None:
            base, compared = scores, "-"
        else:
            shared = [i for i in ids if i in base]
            diff = 100 * (np.array([scores[i] for i in shared]) - np.array([base[i] for i in shared]))
            low, high = interval(diff)
            compared = f"{diff.mean():+.1f} [{low:+.1f}, {high:+.1f}]"
        rows.append(f"| {objective} | {scheduler} | {steps} | {2 * int(steps)} | {values.mean():.3f} | {compared} | "
                    f"{seconds:.2f} | {realism(folder, real)} |")
    return "\n".join(rows)


def sample_grid(work: Path, sets: list[str], out: Path, rows: int = 6) -> None:
    """The first `rows` pairs of every set side by side (the mask, then each set's image of it), 3x enlarged."""
    from PIL import Image

    from sonosynth.data.format import Dataset

    columns = [list(Dataset.open(work / "sets" / spec.replace(":", "-")))[:rows] for spec in sets]
    lines = []
    for i in range(rows):
        tiles = [(columns[0][i].mask > 0).astype(np.uint8) * 255] + [column[i].image for column in columns]
        h, w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
        tiles = [np.pad(t, ((2, 2 + h - t.shape[0]), (2, 2 + w - t.shape[1]))) for t in tiles]
        lines.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(lines, axis=0).astype(np.uint8)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(out)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("real", type=Path)
    parser.add_argument("sets", nargs="+")
    parser.add_argument("--grid", type=Path, help="also write the sets' first images side by side here")
    args = parser.parse_args()
    print(main(args.work, args.sets, args.real))
    if args.grid:
        sample_grid(args.work, args.sets, args.grid)
