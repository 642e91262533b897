"""Paired mask-fidelity difference between two `sonosynth evaluate quality` reports of the same masks and seeds.

    .venv/bin/python benchmarks/compare_fidelity.py QUALITY_A QUALITY_B
prints B - A in Dice points with a 95 % bootstrap interval over the synthetic images (pair ids match).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from sonosynth.evaluation.statistics import paired_bootstrap


def per_image(report: str) -> dict[str, float]:
    data = json.loads((Path(report) / "quality.json").read_text())
    return {row["id"]: row["fidelity_dice"] for row in data["mask_fidelity"]["synthetic"]["per_image"]}


def main() -> None:
    a, b = per_image(sys.argv[1]), per_image(sys.argv[2])
    ids = sorted(set(a) & set(b))
    diff = paired_bootstrap(np.array([[b[i] for i in ids]]), np.array([[a[i] for i in ids]]))
    print(f"{len(ids)} pairs: B - A = {100 * diff.mean:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}] "
          f"Dice points ({diff.verdict})")


if __name__ == "__main__":
    main()
