"""Out-of-distribution view of a scarce-data experiment: do synthetic pairs help more on test images unlike the
k training subjects?

    .venv/bin/python benchmarks/scarce/ood.py DATA REPORT [REPORT ...] [--attribute hc_mm] [--markdown OUT.md]

For every (k, seed) the k subjects are known (`nested_subjects`, as the experiment drew them), hence the range of
an attribute over their training images (HC18: `hc_mm`, the head circumference, a proxy of gestational age, or
`spacing_mm`, the pixel size). Each test image is `inside` that range or `outside` it (a smaller or larger head than
any training head), per seed. Every synthetic arm is compared with `real` and `real+classical` of the same k and
seed on each group: paired per image, 95 % bootstrap intervals over seeds and the group's images. The first REPORT
holds the baselines (`real`, `real+classical`); arms of later reports (ablation levers) are named REPORT:arm.
A report with a designed shift (`--train-where`) draws its k subjects from the pairs meeting it, as here.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

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


def group_dice(cells: list[dict], ids: list[str], keep: np.ndarray) -> np.ndarray:
    """(seeds, images) Dice of the head, NaN outside each seed's group."""
    return np.where(keep, per_image_matrix(cells, ids, "dice", "1"), np.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("reports", type=Path, nargs="+")
    parser.add_argument("--attribute", default="hc_mm")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    dataset = Dataset.open(args.data)
    train_where = json.loads((args.reports[0] / "settings.json").read_text()).get("train_where", "")
    cells: dict[tuple[str, str, int], dict] = {}
    for i, report in enumerate(args.reports):
        for path in sorted((report / "cells").glob("k*.json")):
            cell = json.loads(path.read_text())
            arm = cell["arm"] if i == 0 else f"{report.name}:{cell['arm']}"
            cells[(cell["k"], arm, int(cell["seed"]))] = cell
    by_k: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for k, arm, seed in cells:
        by_k[k][arm].append(seed)
    header = ["k", f"{args.attribute} group", "images per seed", "arm", "seeds", "Dice", "Dice vs real",
              "Dice vs real+classical"]
    lines = [f"Test images inside / outside the range of `{args.attribute}` over the k subjects' training images.\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k in sorted(by_k, key=lambda v: int(v) if v.isdigit() else 10**6):
        if k == "-":
            continue
        arms = by_k[k]
        ids = [e["id"] for e in next(iter(cells.values()))["per_image"]]
        for group in ("inside", "outside"):
            for arm in sorted(arms, key=lambda a: (a not in BASELINES, a)):
                seeds = sorted(s for s in arms[arm] if all((k, b, s) in cells for b in BASELINES))
                if not seeds:
                    continue
                keep = np.stack([groups(dataset, k, s, args.attribute, ids, train_where)[group] for s in seeds])
                if not keep.any():
                    continue
                mine = group_dice([cells[(k, arm, s)] for s in seeds], ids, keep)
                row = [k, group, f"{keep.sum(axis=1).mean():.0f}", arm, ",".join(map(str, seeds)),
                       f"{np.nanmean(mine):.3f}"]
                for baseline in BASELINES:
                    if baseline == arm:
                        row.append("–")
                        continue
                    d = paired_bootstrap(mine, group_dice([cells[(k, baseline, s)] for s in seeds], ids, keep))
                    row.append(d.brief(100))
                lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
