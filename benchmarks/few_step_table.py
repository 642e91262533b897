"""The table of benchmarks/bench_few_step.sh: each synthetic set's mask fidelity, paired against the first set.

    python benchmarks/few_step_table.py WORK SET [SET ...]      (SET: objective:scheduler:steps)

Fidelity is the manifest's `fidelity_dice` (the segmenter's Dice on each generated image against its mask); the
sets share their masks (same seed), so each set is compared with the first pair by pair: the mean difference in
Dice points with a 95 % bootstrap interval over pairs.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np


def fidelity(folder: Path) -> dict[str, float]:
    with open(folder / "manifest.csv", newline="") as handle:
        return {row["id"]: float(row["fidelity_dice"]) for row in csv.DictReader(handle)}


def interval(differences: np.ndarray, seed: int = 0, draws: int = 10000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), (draws, len(differences)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(work: Path, sets: list[str]) -> str:
    rows = ["| objective | sampler | steps | network evaluations per image | mask fidelity (Dice) | vs first set "
            "(points, 95 % CI) | seconds per image |", "|---|---|---|---|---|---|---|"]
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
                    f"{seconds:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), sys.argv[2:]))
