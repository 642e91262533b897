"""The ablation table of `benchmarks/run_ablation.sh`: every lever's synthetic arm against the base report's arms.

    .venv/bin/python benchmarks/scarce/ablation.py ABLATION_DIR [--markdown OUT.md]
    .venv/bin/python benchmarks/scarce/ablation.py ABLATION_DIR --selection 0.25 --real DATASET [--markdown OUT.md]

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


def choose_on_selection(ablation: Path, real: Path, fraction: float, arm: str = "real+synthetic+classical",
                        baseline: str = "real+classical") -> str:
    """Each lever's `arm` against base's `baseline` on the selection split only (`sonosynth.evaluation.selection`);
    the lever with the best mean selection difference over every k is chosen, and only its difference on the
    other test images is reported: the choice reads the selection split, the claim the rest, once."""
    from sonosynth.data.format import Dataset
    from sonosynth.evaluation.selection import restrict, selection_ids

    test = Dataset.open(real).subset("test").records
    chosen_ids = selection_ids(test, fraction)
    rest = {r.id for r in test} - chosen_ids
    reports = {p.name: cells for p in sorted(ablation.iterdir()) if p.is_dir() and (cells := load_cells(p))}
    base = reports["base"]
    lines = [f"Selection split: {len(chosen_ids)} of {len(test)} test images ({100 * fraction:g} % of the test "
             f"subjects, `evaluation.selection`). `{arm}` - base `{baseline}`, Dice points, on the selection split:",
             "", "| lever | " + " | ".join(f"k = {k}" for k in sorted({k for k, _, _ in base}, key=int)) + " | mean |",
             "|---|" + "---|" * (len({k for k, _, _ in base}) + 1)]
    ks = sorted({k for k, _, _ in base}, key=int)
    score: dict[str, float] = {}
    for lever, cells in reports.items():
        cols, means = [], []
        for k in ks:
            seeds = sorted(s for kk, a, s in cells if kk == k and a == arm and (k, baseline, s) in base)
            if not seeds:
                cols.append("–")
                continue
            mine = [restrict(cells[(k, arm, s)], chosen_ids) for s in seeds]
            theirs = [restrict(base[(k, baseline, s)], chosen_ids) for s in seeds]
            ids = [e["id"] for e in mine[0]["per_image"]]
            d = paired_bootstrap(per_image_matrix(mine, ids, "dice", "1") * 100,
                                 per_image_matrix(theirs, ids, "dice", "1") * 100, n_boot=500)
            cols.append(f"{d.brief()} ({len(seeds)} seeds)")
            means.append(d.mean)
        if len(means) == len(ks):
            score[lever] = float(np.mean(means))
        lines.append(f"| {lever} | " + " | ".join(cols) + f" | {score.get(lever, float('nan')):+.2f} |")
    winner = max(score, key=score.get)
    lines += ["", f"Chosen on the selection split: **{winner}** (mean {score[winner]:+.2f} points over k). "
              "On the other test images, once:", ""]
    for k in ks:
        cells = reports[winner]
        seeds = sorted(s for kk, a, s in cells if kk == k and a == arm and (k, baseline, s) in base)
        mine = [restrict(cells[(k, arm, s)], rest) for s in seeds]
        theirs = [restrict(base[(k, baseline, s)], rest) for s in seeds]
        ids = [e["id"] for e in mine[0]["per_image"]]
        d = paired_bootstrap(per_image_matrix(mine, ids, "dice", "1") * 100,
                             per_image_matrix(theirs, ids, "dice", "1") * 100)
        lines.append(f"- k = {k}: `{arm}` - `{baseline}` = {d.mean:+.2f} Dice points [{d.low:+.2f}, {d.high:+.2f}], "
                     f"{d.verdict} ({len(seeds)} seeds x {d.n_images} images)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ablation", type=Path)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--selection", type=float, default=0.0,
                        help="choose the lever on this fraction of the test subjects; report the rest once")
    parser.add_argument("--real", type=Path, default=None, help="with --selection: the real dataset (its test split)")
    args = parser.parse_args()
    if args.selection and args.real is None:
        raise SystemExit("--selection needs --real DATASET (the test split's subjects)")
    text = choose_on_selection(args.ablation, args.real, args.selection) if args.selection else table(args.ablation)
    print(text, end="")
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
