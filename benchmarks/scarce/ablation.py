"""The ablation table of `benchmarks/run_ablation.sh`: every lever's synthetic arm against the base report's arms.

    .venv/bin/python benchmarks/scarce/ablation.py ABLATION_DIR [--markdown OUT.md]

ABLATION_DIR holds one downstream report per lever (`base` and the levers, each with `cells/`), or one folder
of cell files per lever (docs/results/hc18-ablation/cells). For every lever,
arm and k: the mean Dice and head-circumference error over the seeds it has, then paired differences (95 %
bootstrap intervals over seeds and test images, `sonosynth.evaluation.statistics`) against base's `real`,
`real+classical` and `real+synthetic+classical` cells of the same k and seed (the same subjects, generator and
test images), the mean best validation Dice (the val images early stopping watched: what a user could select
a lever by without touching the test set), and whether every segmenter in the row converged (validation stopped
improving before the cap).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from sonosynth.evaluation.statistics import paired_bootstrap, per_image_matrix

BASELINES = ("real", "real+classical", "real+synthetic+classical")


def load_cells(report: Path) -> dict[tuple[str, str, int], dict]:
    """A report's cells (REPORT/cells/*.json, or the cell files of a committed folder)."""
    cells = {}
    folder = report / "cells" if (report / "cells").is_dir() else report
    for path in sorted(folder.glob("k*__*.json")):
        cell = json.loads(path.read_text())
        cells[(cell["k"], cell["arm"], int(cell["seed"]))] = cell
    return cells


def difference(arm: list[dict], base: list[dict], metric: str, scale: float, higher: bool) -> str:
    ids = [e["id"] for e in arm[0]["per_image"]]
    structure = None if metric == "hc_abs_error_mm" else "1"
    a, b = (per_image_matrix(cells, ids, metric, structure) for cells in (arm, base))
    if not np.isfinite(a).any():
        return "–"
    d = paired_bootstrap(a, b, higher_is_better=higher)
    return d.brief(scale)


def table(ablation: Path) -> str:
    reports = {p.name: cells for p in sorted(ablation.iterdir()) if p.is_dir() and (cells := load_cells(p))}
    if "base" not in reports:
        raise SystemExit(f"{ablation}: no base report (run benchmarks/run_ablation.sh run K first)")
    base = reports["base"]
    header = ["k", "lever", "arm", "seeds", "val Dice", "Dice", "HC err. (mm)", "Dice vs real",
              "Dice vs real+classical", "Dice vs base real+syn+cl", "HC err. vs real+classical (mm)", "converged"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for lever, cells in reports.items():
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for k, arm, seed in cells:
            groups[(k, arm)].append(seed)
        for (k, arm), seeds in groups.items():
            rows.append((int(k) if k.isdigit() else 10**6, lever != "base", lever, k, arm, sorted(seeds)))
    for _, _, lever, k, arm, seeds in sorted(rows):
        cells = reports[lever]
        mine = [cells[(k, arm, s)] for s in seeds]
        dice = np.mean([c["metrics"]["dice_1"] for c in mine])
        val = np.mean([c["best_val_dice"] for c in mine])
        hc = np.mean([c["metrics"]["hc_abs_error_mm"] for c in mine])
        compared = []
        for baseline in BASELINES:
            shared = [s for s in seeds if (k, baseline, s) in base]
            if (lever == "base" and arm == baseline) or not shared:
                compared.append("–")
                continue
            compared.append(difference([cells[(k, arm, s)] for s in shared], [base[(k, baseline, s)] for s in shared],
                                       "dice", 100, True))
        shared = [s for s in seeds if (k, "real+classical", s) in base]
        hc_vs = "–" if arm == "real+classical" or not shared else difference(
            [cells[(k, arm, s)] for s in shared], [base[(k, "real+classical", s)] for s in shared],
            "hc_abs_error_mm", 1, False)
        converged = f"{sum(bool(c['converged']) for c in mine)}/{len(mine)}"
        summary = [k, lever, arm, ",".join(map(str, seeds)), f"{val:.3f}", f"{dice:.3f}", f"{hc:.1f}"]
        lines.append("| " + " | ".join([*summary, *compared, hc_vs, converged]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ablation", type=Path)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    text = table(args.ablation)
    print(text, end="")
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
