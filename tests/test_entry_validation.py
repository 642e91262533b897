"""Validate on entry: the three mistakes of issue 16 give one-line errors naming the file, and nothing is written."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from factories import write_toy_dataset
from typer.testing import CliRunner

from sonosynth.cli import app
from sonosynth.data.format import Dataset
from sonosynth.data.imageio import read_label_map, write_png
from sonosynth.errors import DataError


def broken(tmp_path: Path, how: str) -> tuple[Path, str]:
    """A toy dataset with one mistake; returns it and the text the error must contain."""
    data = write_toy_dataset(tmp_path / how)
    record = Dataset.open(data).records[0]
    mask_path = data / record.mask
    if how == "mask-0-255":
        write_png(mask_path, read_label_map(mask_path) * 255)  # hashes are stale too: entry checks skip them
        return data, f"{mask_path}: mask values [255] outside the declared labels 0..1"
    if how == "mask-size":
        write_png(mask_path, np.zeros((10, 12), np.uint8))
        return data, f"{mask_path}: mask size 12x10 differs from image size"
    manifest = data / "manifest.csv"  # "escape": a manifest path pointing outside the folder
    rows = list(csv.DictReader(manifest.open()))
    rows[0]["image"] = "../elsewhere/x.png"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return data, f"{manifest}: line 2: image path '../elsewhere/x.png' is not inside the dataset folder"


@pytest.mark.parametrize("how", ["mask-0-255", "mask-size", "escape"])
@pytest.mark.parametrize("command", ["train", "segment train"])
def test_bad_pairs_are_refused_before_any_output(tmp_path, how, command):
    data, message = broken(tmp_path, how)
    out = tmp_path / "out"
    args = [*command.split(), str(data), "--out", str(out), "--max-steps", "1", "--device", "cpu",
            "--net-size", "tiny", "--size", "32", *(["--split", "all"] if command == "train" else ["--auto-split"])]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, DataError), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert not out.exists()


def test_data_check_reports_an_escaping_path(tmp_path):
    data, message = broken(tmp_path, "escape")
    result = CliRunner().invoke(app, ["data", "check", str(data)])
    assert isinstance(result.exception, DataError) and message in str(result.exception)


def test_a_symlinked_images_folder_is_still_inside(tmp_path):
    from sonosynth.data.validate import require_valid

    data = write_toy_dataset(tmp_path / "toy")
    (data / "images").rename(tmp_path / "images-on-another-disk")
    (data / "images").symlink_to(tmp_path / "images-on-another-disk")
    require_valid(Dataset.open(data))  # no error: the path as written stays in the folder
