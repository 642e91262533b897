"""Importers on the real BUSI and CAMUS-224 development subsets (skipped when absent, required under CI=true)."""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from factories import imported_once
from scipy.sparse.csgraph import connected_components

from sonosynth.data.format import DATASET_JSON, MANIFEST_CSV, Dataset
from sonosynth.data.imageio import read_image, read_label_map
from sonosynth.data.importers import import_dataset
from sonosynth.data.importers.busi import NEAR_DUPLICATE_THRESHOLD, thumbnail
from sonosynth.data.importers.pairing import safe_id
from sonosynth.data.splits import SplitConfig, split_dataset
from sonosynth.data.validate import check_dataset

# The CAMUS-224 import as README.md and docs/dataset-format.md show it.
CAMUS224_OPTIONS = dict(
    images="images/*_E[DS].png",
    masks="images/{stem}_gt.png",
    label_names=["LV cavity", "LV myocardium", "left atrium"],
    name_pattern=r"(?P<subject>patient\d+)_(?P<view>2CH|4CH)_(?P<phase>ED|ES)",
)


@pytest.fixture(scope="session")
def busi_dataset(busi: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real BUSI subset imported once per test session."""
    return imported_once(tmp_path_factory, "busi_imported", lambda out: import_dataset("busi", busi, out))


def test_real_busi_yields_469_pairs_with_pathology_and_empty_normal_masks(busi_dataset: Path):
    ds = Dataset.open(busi_dataset)
    assert len(ds) == 469
    assert ds.info.attributes == {"pathology": ["benign", "malignant", "normal"]}
    pathology = {r.id: r.attributes["pathology"] for r in ds.records}
    assert Counter(pathology.values()) == {"benign": 268, "malignant": 123, "normal": 78}
    empty = {r.id for r in ds.records if not read_label_map(ds.path_of(r, "mask")).any()}
    assert len(empty) == 78 and {pathology[i] for i in empty} == {"normal"}


def test_real_busi_merges_an_image_s_mask_files(busi: Path, busi_dataset: Path):
    second = sorted((busi / "benign").glob("* (*)_mask_1.png"))[0]  # e.g. benign (100)_mask_1.png
    stem = second.name.removesuffix("_mask_1.png")
    parts = sorted(second.parent.glob(f"{stem}_mask*.png"))
    assert len(parts) >= 2
    union = np.any([read_label_map(p) > 0 for p in parts], axis=0)
    record_id = safe_id(stem)
    mask = Dataset.open(busi_dataset).subset(ids=[record_id])[0].mask
    assert np.array_equal(mask, union.astype(np.uint8))
    assert all(not np.array_equal(mask > 0, read_label_map(p) > 0) for p in parts)  # each file adds a lesion


def test_real_busi_near_duplicates_share_a_subject_and_one_split(busi_dataset: Path, tmp_path: Path):
    ds = Dataset.open(busi_dataset)
    thumbs = np.stack([thumbnail(read_image(ds.path_of(r))) for r in ds.records])
    linked = thumbs @ thumbs.T > NEAR_DUPLICATE_THRESHOLD
    members: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(ds.records):
        members[record.subject].append(i)
    groups = {subject: rows for subject, rows in members.items() if len(rows) > 1}
    assert len(groups) == 80 and max(map(len, groups.values())) == 7
    for subject, rows in groups.items():
        assert subject == min(ds.records[i].id for i in rows)
        # linked within (one connected component above the threshold) ...
        count, _ = connected_components(linked[np.ix_(rows, rows)], directed=False)
        assert count == 1, f"group {subject} is not linked by correlations > {NEAR_DUPLICATE_THRESHOLD}"
    # ... and never linked to an image of another subject
    subject_of = np.array([r.subject for r in ds.records])
    across = linked & (subject_of[:, None] != subject_of[None, :])
    assert not across.any()

    copy = tmp_path / "busi"  # a split reads and rewrites only these two files
    copy.mkdir()
    for name in (DATASET_JSON, MANIFEST_CSV):
        shutil.copy(busi_dataset / name, copy / name)
    split_dataset(copy, SplitConfig(by="subject", val=0.15, test=0.15, seed=0))
    split_of = {r.id: r.split for r in Dataset.open(copy).records}
    for rows in groups.values():
        assert len({split_of[ds.records[i].id] for i in rows}) == 1


def _copy_camus224_patients(camus224: Path, out: Path, patients: list[str]) -> Path:
    (out / "images").mkdir(parents=True)
    for patient in patients:
        for path in (camus224 / "images").glob(f"{patient}_*.png"):
            shutil.copy(path, out / "images" / path.name)
    return out


def test_real_camus224_patients_import_with_subject_view_phase_and_labels(camus224: Path, tmp_path: Path):
    patients = ["patient0001", "patient0002", "patient0003"]
    src = _copy_camus224_patients(camus224, tmp_path / "camus-224", patients)
    assert len(list((src / "images").iterdir())) == 24
    summary = import_dataset("folder", src, tmp_path / "out", **CAMUS224_OPTIONS)
    assert summary.pairs == 12 and not summary.empty_masks
    ds = Dataset.open(tmp_path / "out")
    assert ds.info.name == "out"
    assert ds.info.labels == {"0": "background", "1": "LV cavity", "2": "LV myocardium", "3": "left atrium"}
    assert ds.info.attributes == {"view": ["2CH", "4CH"], "phase": ["ED", "ES"]}
    assert ds.subjects == patients
    for sample in ds:
        patient, view, phase = sample.id.split("_")
        assert (sample.record.subject, sample.record.attributes) == (patient, {"view": view, "phase": phase})
        assert sample.image.shape == (224, 224)
        assert np.array_equal(sample.image, read_image(src / "images" / f"{sample.id}.png"))
        assert np.array_equal(sample.mask, read_label_map(src / "images" / f"{sample.id}_gt.png"))
        assert set(np.unique(sample.mask).tolist()) == {0, 1, 2, 3}
    assert check_dataset(tmp_path / "out").ok


def test_real_camus224_full_import_has_1600_pairs_of_400_patients(camus224: Path, tmp_path: Path):
    summary = import_dataset("folder", camus224, tmp_path / "camus-224", **CAMUS224_OPTIONS)
    assert summary.pairs == 1600 and not summary.empty_masks
    ds = Dataset.open(tmp_path / "camus-224")
    assert ds.info.name == "camus-224" and len(ds.subjects) == 400
    assert Counter((r.attributes["view"], r.attributes["phase"]) for r in ds.records) == {
        (view, phase): 400 for view in ("2CH", "4CH") for phase in ("ED", "ES")
    }
    report = check_dataset(tmp_path / "camus-224", verify_hashes=False)
    assert report.ok and set(report.label_pixels) == {0, 1, 2, 3}
