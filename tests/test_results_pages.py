"""Every committed result page rebuilds from its cells: its results.csv and comparisons.csv are what today's code
makes of the cell records beside them (docs/results/*/cells/*.json), so a page can be continued and checked."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from sonosynth.evaluation.report import aggregate_cells, comparison_rows

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
PAGES = sorted(p.parent for p in RESULTS.rglob("settings.json")
               if (p.parent / "cells").is_dir() and (p.parent / "results.csv").is_file())


def same(committed: list[dict[str, str]], rebuilt: list[dict[str, object]], where: Path) -> None:
    assert len(committed) == len(rebuilt), f"{where}: {len(committed)} committed rows, {len(rebuilt)} rebuilt"
    for number, (old, new) in enumerate(zip(committed, rebuilt, strict=True), start=2):
        for key, text in old.items():
            value = new.get(key)
            try:
                a, b = float(text), float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                assert (value if value is not None else "") == text, f"{where}:{number} {key}: {text} != {value}"
                continue
            assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), \
                f"{where}:{number} {key}: committed {text}, rebuilt {value}"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_committed_pages_are_found() -> None:
    assert len(PAGES) >= 8, PAGES


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(RESULTS)) for p in PAGES])
def test_a_page_rebuilds_from_its_cells(page: Path) -> None:
    cells = [json.loads(p.read_text()) for p in sorted((page / "cells").glob("*.json"))]
    settings = json.loads((page / "settings.json").read_text())
    if "segmentation" not in settings:  # an anomaly experiment's page (`evaluate anomaly`)
        from sonosynth.evaluation.anomaly import anomaly_rows

        results, comparisons = anomaly_rows(cells)
        same(read_csv(page / "results.csv"), results, page / "results.csv")
        same(read_csv(page / "comparisons.csv"), comparisons, page / "comparisons.csv")
        return
    if settings.get("selection"):  # the tables are on the test images outside the selection split
        from sonosynth.evaluation.report import SELECTION_IDS
        from sonosynth.evaluation.selection import restrict

        selection = set(json.loads((page / SELECTION_IDS).read_text()))
        kept = {e["id"] for e in cells[0]["per_image"]} - selection
        assert selection and kept, page
        cells = [restrict(c, kept) for c in cells]
    same(read_csv(page / "results.csv"), aggregate_cells(cells), page / "results.csv")
    if (page / "comparisons.csv").is_file():
        labels = settings["segmentation"]["labels"]
        structures = settings.get("structures") or {v: [int(v)] for v in labels if v != "0"}
        same(read_csv(page / "comparisons.csv"), comparison_rows(cells, structures, labels), page / "comparisons.csv")
