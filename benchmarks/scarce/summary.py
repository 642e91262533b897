"""One compact table per dataset for the README, from a downstream report's results.csv and comparisons.csv.

    python benchmarks/scarce/summary.py docs/results/hc18 [--extra hc_abs_error_mm]

Per k: the mean foreground Dice of every arm (mean over structures), then whether the synthetic
arms (+syn = real+synthetic, +syn+cl = real+synthetic+classical) beat `real` and `real+classical`
on Dice: the verdicts of comparisons.csv per structure, difference in points [95 % interval].
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from sonosynth.evaluation.statistics import SHORT_VERDICTS

ARMS = ("real", "real+classical", "real+synthetic", "real+synthetic+classical", "synthetic")
NAMES = {"real+synthetic": "+syn", "real+synthetic+classical": "+syn+cl"}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--extra", default=None, help="a second metric column per arm, e.g. hc_abs_error_mm")
    args = parser.parse_args()
    rows, compared = (read_csv(args.report / name) for name in ("results.csv", "comparisons.csv"))
    by_k: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        by_k[row["k"]][row["arm"]] = row
    header = ["k", "seeds", *ARMS, "synthetic arms vs real (Dice)", "synthetic arms vs real+classical (Dice)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for k in sorted(by_k, key=lambda v: (v == "all", int(v) if v.isdigit() else 0)):
        arms = by_k[k]
        cells = [k, "/".join(sorted({a["n_seeds"] for a in arms.values()}))]
        for arm in ARMS:
            row = arms.get(arm)
            if row is None:
                cells.append("–")
                continue
            value = f"{float(row['dice_mean_mean']):.3f}"
            if args.extra and row.get(f"{args.extra}_mean"):
                value += f" / {float(row[f'{args.extra}_mean']):.1f}"
            cells.append(value)
        for baseline in ("real", "real+classical"):
            found = [
                f"{NAMES[c['arm']]} {c['structure']}: "
                f"{SHORT_VERDICTS[c['verdict']]} "
                f"({float(c['mean']):+.1f} [{float(c['low']):+.1f}, {float(c['high']):+.1f}])"
                for c in compared
                if (c["k"], c["baseline"]) == (k, baseline) and c["arm"] in ARMS[2:4] and c["metric"].startswith("Dice")
            ]
            cells.append("; ".join(found) or "–")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
