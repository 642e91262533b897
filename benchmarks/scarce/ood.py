"""Out-of-distribution view of a scarce-data experiment: do synthetic pairs help more on test images unlike the
k training subjects?

    .venv/bin/python benchmarks/scarce/ood.py DATA REPORT [REPORT ...] [--attribute hc_mm] [--markdown OUT.md]

For every (k, seed) the k subjects are known (`nested_subjects`, as the experiment drew them), hence the range of
an attribute over their training images (HC18: `hc_mm`, the head circumference, a proxy of gestational age, or
`spacing_mm`, the pixel size). Each test image is `inside` that range or `outside` it (a smaller or larger head than
any training head), per seed. Every synthetic arm is compared with `real` and `real+classical` of the same k and
seed on each group: paired per image, 95 % bootstrap intervals over seeds and the group's images. The first REPORT
holds the baselines (`real`, `real+classical`); arms of later reports (ablation levers) are named REPORT:arm. A
REPORT is a report folder or a folder of its cells (docs/results/hc18-shift/cells/<lever>).
A report with a designed shift (`--train-where`) draws its k subjects from the pairs meeting it, as here, and
`--groups condition` splits the test images by that condition instead (the designed groups: like the training group
or not), the same for every seed.

    .venv/bin/python benchmarks/scarce/ood.py DATA SHIFT_REPORT [REPORT ...] --groups condition [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from sonosynth.data.conditions import Condition
from sonosynth.data.format import Dataset
from sonosynth.evaluation.downstream import nested_subjects, training_pool
from sonosynth.evaluation.statistics import paired_bootstrap, per_image_matrix

BASELINES = ("real", "real+classical")


def attribute(record, name: str) -> float:
    value = getattr(record, name, None)
    return float(value if value is not None else record.attributes[name])


def groups(
    dataset: Dataset, k: str, seed: int, name: str, ids: list[str], train_where: str = ""
) -> dict[str, np.ndarray]:
    """Boolean masks over `ids`: test images inside / outside the k subjects' range of `name` (drawn, as the
    experiment did, from the training pairs meeting `train_where`)."""
    train = training_pool(dataset, train_where)[0]
    chosen = set(nested_subjects(train.subjects, k, seed))
    values = [attribute(r, name) for r in train.records if (r.subject or r.id) in chosen]
    low, high = min(values), max(values)
    by_id = {r.id: attribute(r, name) for r in dataset.records}
    test = np.array([by_id[i] for i in ids])
    inside = (test >= low) & (test <= high)
    return {"inside": inside, "outside": ~inside}


def condition_groups(dataset: Dataset, train_where: str, ids: list[str]) -> dict[str, np.ndarray]:
    """Boolean masks over `ids`: test images that meet the designed shift's condition (the training group) or not."""
    condition = Condition.parse(train_where)
    by_id = {r.id: condition.matches(r) for r in dataset.records}
    meets = np.array([by_id[i] for i in ids])
    return {str(condition): meets, f"not {condition}": ~meets}


Cells = dict[tuple[str, str, int], dict]  # (k, arm, seed) -> cell


def group_scores(cells: Cells, k: str, arm: str, seeds: list[int], ids: list[str], keep: np.ndarray,
                 metric: str = "dice") -> np.ndarray:
    """(seeds, images) Dice of the head (or its HC error, metric `hc_abs_error_mm`), NaN outside each seed's group."""
    structure = None if metric == "hc_abs_error_mm" else "1"
    matrix = per_image_matrix([cells[(k, arm, s)] for s in seeds], ids, metric, structure)
    return np.where(keep, matrix, np.nan)


def group_row(cells: Cells, k: str, arm: str, seeds: list[int], ids: list[str], keep: np.ndarray) -> list[str]:
    """Dice and HC error of one arm on one group, paired with the baselines (Dice) and real+classical (HC)."""
    dice, hc = (group_scores(cells, k, arm, seeds, ids, keep, m) for m in ("dice", "hc_abs_error_mm"))
    row = [f"{np.nanmean(dice):.3f}"]
    row += ["–" if b == arm else paired_bootstrap(dice, group_scores(cells, k, b, seeds, ids, keep)).brief(100)
            for b in BASELINES]
    strongest = BASELINES[-1]
    row += [f"{np.nanmean(hc):.1f}", "–" if arm == strongest else paired_bootstrap(
        hc, group_scores(cells, k, strongest, seeds, ids, keep, "hc_abs_error_mm"), higher_is_better=False).brief()]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("reports", type=Path, nargs="+")
    parser.add_argument("--attribute", default="hc_mm")
    parser.add_argument("--groups", choices=("range", "condition"), default="range",
                        help="range: inside / outside the k subjects' range of --attribute; condition: meeting the "
                             "first report's --train-where or not")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    dataset = Dataset.open(args.data)
    settings = args.reports[0] / "settings.json"
    if not settings.is_file():
        parser.error(f"{settings}: not found (the first REPORT must be a report or a committed cells folder)")
    train_where = json.loads(settings.read_text()).get("train_where", "")
    if args.groups == "condition" and not train_where:
        parser.error(f"--groups condition: {args.reports[0]} has no designed shift (settings.json train_where)")
    cells: Cells = {}
    for i, report in enumerate(args.reports):
        folder = report / "cells" if (report / "cells").is_dir() else report  # a report, or a folder of its cells
        for path in sorted(folder.glob("k*.json")):
            cell = json.loads(path.read_text())
            arm = cell["arm"] if i == 0 else f"{report.name}:{cell['arm']}"
            cells[(cell["k"], arm, int(cell["seed"]))] = cell
    by_k: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for k, arm, seed in cells:
        by_k[k][arm].append(seed)
    if not cells:
        parser.error(f"no cells (k*.json) in {', '.join(map(str, args.reports))} or their cells/ folders")
    ids = [e["id"] for e in next(iter(cells.values()))["per_image"]]
    if args.groups == "condition":
        group_column = "test group"
        title = (f"Test images meeting the training group's condition `{train_where}` or not (the k subjects were "
                 "drawn from the pairs meeting it).\n")
    else:
        group_column = f"{args.attribute} group"
        title = f"Test images inside / outside the range of `{args.attribute}` over the k subjects' training images.\n"
    header = ["k", group_column, "images per seed", "arm", "seeds", "Dice", "Dice vs real", "Dice vs real+classical",
              "HC err. (mm)", "HC err. vs real+classical (mm)"]
    lines = [title, "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # the designed groups are the same for every k and seed; the range groups depend on the k subjects drawn
    by_condition = condition_groups(dataset, train_where, ids) if args.groups == "condition" else None
    for k in sorted(by_k, key=lambda v: int(v) if v.isdigit() else 10**6):
        if k == "-":
            continue
        arms = by_k[k]
        seeds_here = {s for v in arms.values() for s in v}
        split = {s: by_condition or groups(dataset, k, s, args.attribute, ids, train_where) for s in seeds_here}
        for group in next(iter(split.values())):
            for arm in sorted(arms, key=lambda a: (a not in BASELINES, a)):
                seeds = sorted(s for s in arms[arm] if all((k, b, s) in cells for b in BASELINES))
                if not seeds:
                    continue
                keep = np.stack([split[s][group] for s in seeds])
                if keep.any():
                    row = [k, group, f"{keep.sum(axis=1).mean():.0f}", arm, ",".join(map(str, seeds))]
                    lines.append("| " + " | ".join(row + group_row(cells, k, arm, seeds, ids, keep)) + " |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
