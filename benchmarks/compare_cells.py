"""Paired difference of two finished downstream cells scored on the same real test images (any two reports).

    .venv/bin/python benchmarks/compare_cells.py REPORT_A/cells/CELL.json REPORT_B/cells/CELL.json [--structure 1]
prints B - A per image for Dice (points) and head-circumference error (mm) with 95 % bootstrap intervals,
e.g. a 256 px pipeline's cell against the 64 px pipeline's cell of the same k and seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sonosynth.evaluation.statistics import paired_bootstrap, per_image_matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--structure", default="1")
    args = parser.parse_args()
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    ids = sorted({e["id"] for e in a["per_image"]} & {e["id"] for e in b["per_image"]})
    for metric, structure, scale, unit, higher in (("dice", args.structure, 100, "Dice points", True),
                                                    ("hc_abs_error_mm", None, 1, "mm HC error", False)):
        arm, base = (per_image_matrix([c], ids, metric, structure) for c in (b, a))
        if not (arm == arm).any():
            continue
        d = paired_bootstrap(arm, base, higher_is_better=higher)
        print(f"{len(ids)} images, {unit}: B - A = {scale * d.mean:+.2f} [{scale * d.low:+.2f}, {scale * d.high:+.2f}]"
              f" ({d.verdict})")


if __name__ == "__main__":
    main()
