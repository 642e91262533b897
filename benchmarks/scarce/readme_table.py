"""The README's cross-dataset table: `python benchmarks/scarce/readme_table.py` (reads docs/results/*/).

Mean foreground Dice per arm on each dataset's real test images (HC18 with the head-circumference
error, BUSI with the false-positive rate on normal images), for every k whose five arms have all
finished, and the better synthetic arm against `real+classical` (Dice points, 95 % interval, verdict).
"""

from __future__ import annotations

from pathlib import Path

from summary import ARMS, read_csv  # benchmarks/scarce/summary.py

DATASETS = (("hc18", "HC18", "hc_abs_error_mm"), ("busi", "BUSI", "fp_rate_1"), ("camus-224", "CAMUS-224", None))
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def arm_value(row: dict[str, str], extra: str | None) -> str:
    value = f"{float(row['dice_mean_mean']):.3f}"
    if extra and row.get(f"{extra}_mean"):
        number = float(row[f"{extra}_mean"])
        value += f" ({number:.1f} mm)" if extra == "hc_abs_error_mm" else f" (FP {number:.2f})"
    return value


def against_classical(compared: list[dict[str, str]], k: str, arm: str) -> str:
    found = [c for c in compared
             if (c["k"], c["arm"], c["baseline"]) == (k, arm, "real+classical") and c["metric"].startswith("Dice")]
    parts = [f"{c['structure']} {float(c['mean']):+.1f} "
             f"[{float(c['low']):+.1f}, {float(c['high']):+.1f}] {c['verdict']}" for c in found]
    return f"{arm}: " + "; ".join(parts)


def main() -> None:
    header = ["dataset", "k", "test images", *ARMS[:4], "synthetic only", "better synthetic arm vs real+classical"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, title, extra in DATASETS:
        folder = RESULTS / name
        if not (folder / "results.csv").is_file():
            continue
        by_k: dict[str, dict[str, dict[str, str]]] = {}
        for row in read_csv(folder / "results.csv"):
            by_k.setdefault(row["k"], {})[row["arm"]] = row
        compared = read_csv(folder / "comparisons.csv")
        for k, arms in sorted(by_k.items(), key=lambda item: int(item[0])):
            if set(arms) != set(ARMS):
                continue
            cells = [title, k, f"{int(float(next(iter(arms.values()))['n_test_images']))}"]
            cells += [arm_value(arms[arm], extra) for arm in ARMS]
            best = max(ARMS[2:4], key=lambda arm: float(arms[arm]["dice_mean_mean"]))
            cells.append(against_classical(compared, k, best))
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
