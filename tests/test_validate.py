"""`check`: every kind of problem is found and named; the summary counts what is in the dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from rich.console import Console

from sonosynth.data.format import DatasetInfo, DatasetWriter
from sonosynth.data.imageio import write_png
from sonosynth.data.validate import check_dataset, print_report


def test_valid_dataset_summary(toy_dataset: Path):
    report = check_dataset(toy_dataset)
    assert report.ok and report.records == 6
    assert report.image_sizes == {(64, 48): 6} and report.image_dtypes == {"uint8": 6}
    assert report.images_per_split == {"": 6} and len(report.subjects_per_split[""]) == 3
    assert report.label_images == {0: 6, 1: 6}
    assert sum(report.label_pixels.values()) == 6 * 48 * 64
    assert report.attributes == {"view": {"a": 3, "b": 3}}
    assert report.empty_masks == []


def test_empty_masks_are_counted_not_errors(tmp_path: Path):
    info = DatasetInfo(name="e", labels={"0": "background", "1": "fg"}, attributes={"note": None})
    with DatasetWriter(tmp_path / "d", info) as writer:
        writer.add("full", np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8), note="1.5")
        writer.add("empty", np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), note="2.5")
    report = check_dataset(tmp_path / "d")
    assert report.ok and report.empty_masks == ["empty"]
    console = Console(record=True, width=120)
    print_report(report, console)
    text = console.export_text()
    assert "empty masks (background only): 1" in text
    assert "2 numbers, 1.5..2.5" in text  # free-form attributes are summarised as a range
    assert "ok" in text


def test_every_problem_is_found_and_names_the_file(toy_dataset: Path):
    # a changed image (hash), a missing mask, a mask with an undeclared label, a mask of another size,
    # and an attribute value that is not declared
    write_png(toy_dataset / "images" / "toy_000.png", np.zeros((48, 64), np.uint8))
    (toy_dataset / "masks" / "toy_001.png").unlink()
    write_png(toy_dataset / "masks" / "toy_002.png", np.full((48, 64), 5, np.uint8))
    write_png(toy_dataset / "masks" / "toy_003.png", np.zeros((10, 10), np.uint8))
    with open(toy_dataset / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[4]["view"] = "c"
    with open(toy_dataset / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = check_dataset(toy_dataset)
    text = "\n".join(report.problems)
    assert not report.ok
    assert "images/toy_000.png: sha256 does not match" in text
    assert "masks/toy_001.png: mask file missing" in text
    assert "masks/toy_002.png: mask values [5] outside the declared labels 0..1" in text
    assert "masks/toy_003.png: mask size 10x10 differs from image size 64x48" in text
    assert "toy_004: view='c' not in ['a', 'b']" in text
    console = Console(record=True, width=200)
    print_report(report, console)
    assert "problem(s)" in console.export_text()
    assert check_dataset(toy_dataset, verify_hashes=False).problems != report.problems  # hash check is optional
