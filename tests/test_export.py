"""nnU-Net v2 export: layout, dataset.json, and the round trip import -> export -> import (identical pixels)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from factories import write_busi

from sonosynth.data.export import export_nnunet
from sonosynth.data.format import Dataset, DatasetInfo, DatasetWriter
from sonosynth.data.imageio import read_image
from sonosynth.data.importers import import_dataset
from sonosynth.errors import DataError


def _assert_same_pixels(first: Path, second: Path) -> None:
    a, b = Dataset.open(first), Dataset.open(second)
    assert sorted(r.id for r in a.records) == sorted(r.id for r in b.records)
    pairs_b = {s.id: s for s in b}
    for sample in a:
        other = pairs_b[sample.id]
        assert sample.image.dtype == other.image.dtype
        assert np.array_equal(sample.image, other.image), sample.id
        assert np.array_equal(sample.mask, other.mask), sample.id


def test_export_layout_and_dataset_json(toy_dataset: Path, tmp_path: Path):
    target = export_nnunet(toy_dataset, tmp_path / "nnUNet_raw", 7)
    assert target == tmp_path / "nnUNet_raw" / "Dataset007_toy"
    data = json.loads((target / "dataset.json").read_text())
    assert data["channel_names"] == {"0": "US"}
    assert data["labels"] == {"background": 0, "head": 1}
    assert data["numTraining"] == 6 and data["file_ending"] == ".png"
    assert sorted(p.name for p in (target / "imagesTr").iterdir())[:2] == ["toy_000_0000.png", "toy_001_0000.png"]
    assert len(list((target / "labelsTr").iterdir())) == 6
    image = read_image(target / "imagesTr" / "toy_000_0000.png")
    assert image.dtype == np.uint8 and image.ndim == 2


def test_round_trip_busi_like_import_export_import_is_pixel_identical(tmp_path: Path):


    write_busi(tmp_path / "busi")
    import_dataset("busi", tmp_path / "busi", tmp_path / "a")
    target = export_nnunet(tmp_path / "a", tmp_path / "raw", 1)
    import_dataset("nnunet", target, tmp_path / "b")
    _assert_same_pixels(tmp_path / "a", tmp_path / "b")
    assert Dataset.open(tmp_path / "b").info.labels == {"0": "background", "1": "lesion"}


def test_round_trip_keeps_16_bit_images_and_several_labels(tmp_path: Path):
    rng = np.random.default_rng(0)
    info = DatasetInfo(name="multi label", labels={"0": "background", "1": "lv", "2": "myo", "3": "la"})
    with DatasetWriter(tmp_path / "a", info) as writer:
        for i in range(3):
            image = rng.integers(0, 65535, (20, 30), dtype=np.uint16)
            writer.add(f"c{i}", image, rng.integers(0, 4, (20, 30), dtype=np.uint8))
    target = export_nnunet(tmp_path / "a", tmp_path / "raw", 42)
    assert target.name == "Dataset042_multi_label"
    import_dataset("nnunet", target, tmp_path / "b")
    _assert_same_pixels(tmp_path / "a", tmp_path / "b")


def test_round_trip_on_real_hc18_images(hc18: Path, tmp_path: Path):
    src = tmp_path / "hc18"
    (src / "training_set").mkdir(parents=True)
    stems = ["000_HC", "010_HC", "010_2HC"]
    with open(hc18 / "training_set_pixel_size_and_HC.csv", newline="") as fh:
        rows = [row for row in csv.reader(fh) if row[0] in {f"{s}.png" for s in stems} or row[0] == "filename"]
    with open(src / "training_set_pixel_size_and_HC.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    for stem in stems:
        for suffix in (".png", "_Annotation.png"):
            (src / "training_set" / f"{stem}{suffix}").write_bytes(
                (hc18 / "training_set" / f"{stem}{suffix}").read_bytes()
            )
    import_dataset("hc18", src, tmp_path / "a")
    target = export_nnunet(tmp_path / "a", tmp_path / "raw", 18)
    import_dataset("nnunet", target, tmp_path / "b")
    _assert_same_pixels(tmp_path / "a", tmp_path / "b")


def test_export_only_some_splits(toy_dataset: Path, tmp_path: Path):
    from sonosynth.data.splits import SplitConfig, split_dataset

    split_dataset(toy_dataset, SplitConfig(val=0.34, test=0.0, seed=0))
    counts = {s: len(Dataset.open(toy_dataset).subset(split=s)) for s in ("train", "val")}
    target = export_nnunet(toy_dataset, tmp_path / "raw", 3, splits=["train"])
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == counts["train"]
    with pytest.raises(DataError, match="no records to export"):
        export_nnunet(toy_dataset, tmp_path / "raw2", 4, splits=["test"])


def test_export_refuses_existing_target_taken_id_and_bad_id(toy_dataset: Path, tmp_path: Path):
    export_nnunet(toy_dataset, tmp_path / "raw", 5)
    with pytest.raises(DataError, match=r"Dataset005_toy: output folder already exists"):
        export_nnunet(toy_dataset, tmp_path / "raw", 5)
    with pytest.raises(DataError, match=r"Dataset005_toy: nnU-Net dataset id 5 is already taken"):
        export_nnunet(toy_dataset, tmp_path / "raw", 5, name="other")
    with pytest.raises(DataError, match="1..999"):
        export_nnunet(toy_dataset, tmp_path / "raw", 1000)
    export_nnunet(toy_dataset, tmp_path / "raw", 5, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset005_toy"]


def test_export_of_a_dataset_with_a_missing_file_leaves_nothing(toy_dataset: Path, tmp_path: Path):
    (toy_dataset / "masks" / "toy_003.png").unlink()
    with pytest.raises(DataError, match=r"toy_003\.png: mask file missing; cannot use these pairs to export"):
        export_nnunet(toy_dataset, tmp_path / "raw", 9)
    assert not (tmp_path / "raw").exists()  # refused before anything was created


def test_rgb_mask_png_is_re_encoded_as_a_label_map(tmp_path: Path):
    from PIL import Image

    info = DatasetInfo(name="x", labels={"0": "background", "1": "fg"})
    with DatasetWriter(tmp_path / "a", info) as writer:
        writer.add("c0", np.zeros((6, 6), np.uint8), np.eye(6, dtype=np.uint8))
    Image.fromarray(np.stack([np.eye(6, dtype=np.uint8)] * 3, -1)).save(tmp_path / "a" / "masks" / "c0.png")
    target = export_nnunet(tmp_path / "a", tmp_path / "raw", 2)
    with Image.open(target / "labelsTr" / "c0.png") as im:
        assert im.mode == "L"
