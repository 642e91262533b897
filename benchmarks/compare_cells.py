"""Paired difference of finished downstream cells scored on the same real test images (any two reports).

    .venv/bin/python benchmarks/compare_cells.py A_SEED0.json[,A_SEED1.json ...] B_SEED0.json[,B_SEED1.json ...]
prints B - A per image for Dice (points) and head-circumference error (mm) with 95 % bootstrap intervals,
e.g. a 256 px pipeline's cells against the 64 px pipeline's cells of the same k and seeds. With several cells
per side (comma separated, the i-th of A paired with the i-th of B: the same seed) the difference is averaged over
the seeds and the images are resampled (statistics.paired_bootstrap). With `--selection F --real DATASET` the
images of the reports' selection split are left out (the claim part only; `evaluation.selection`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sonosynth.evaluation.statistics import paired_bootstrap, per_image_matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="cell JSON files, comma separated (one per seed)")
    parser.add_argument("b", help="the cells to compare with A's, in the same seed order")
    parser.add_argument("--structure", default="1")
    parser.add_argument("--selection", type=float, default=0.0, help="leave out this selection split (with --real)")
    parser.add_argument("--real", help="the real dataset the cells were tested on (for --selection)")
    args = parser.parse_args()
    a, b = ([json.loads(Path(p).read_text()) for p in side.split(",")] for side in (args.a, args.b))
    if len(a) != len(b):
        parser.error(f"A has {len(a)} cells and B {len(b)}: pair them seed by seed")
    ids = sorted(set.intersection(*({e["id"] for e in cell["per_image"]} for cell in a + b)))
    if args.selection:
        from sonosynth.data.format import Dataset
        from sonosynth.evaluation.selection import selection_ids

        if not args.real:
            parser.error("--selection needs --real DATASET")
        test = [r for r in Dataset.open(args.real).records if r.split == "test"]
        ids = sorted(set(ids) - selection_ids(test, args.selection))
    for metric, structure, scale, unit, higher in (("dice", args.structure, 100, "Dice points", True),
                                                    ("hc_abs_error_mm", None, 1, "mm HC error", False)):
        arm, base = (per_image_matrix(cells, ids, metric, structure) for cells in (b, a))
        if not (arm == arm).any():
            continue
        d = paired_bootstrap(arm, base, higher_is_better=higher)
        print(f"{len(ids)} images x {len(a)} seed(s), {unit}: B - A = {scale * d.mean:+.2f} "
              f"[{scale * d.low:+.2f}, {scale * d.high:+.2f}] ({d.verdict})")


if __name__ == "__main__":
    main()
