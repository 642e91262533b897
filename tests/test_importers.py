"""BUSI, CAMUS, folder and nnU-Net importers on small files written in each format by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import box, speckle, write_busi
from PIL import Image
from scipy import ndimage

from sonosynth.data.format import Dataset
from sonosynth.data.imageio import write_png
from sonosynth.data.importers import import_dataset
from sonosynth.data.importers.busi import near_duplicate_groups
from sonosynth.data.importers.camus import to_uint8_or_16
from sonosynth.data.importers.folder import parse_label_map
from sonosynth.errors import DataError


def test_busi_merges_masks_converts_rgb_and_keeps_pathology(tmp_path: Path):
    images = write_busi(tmp_path / "busi")
    summary = import_dataset("busi", tmp_path / "busi", tmp_path / "out")
    assert summary.pairs == 3 and summary.empty_masks == ["normal_1"]
    ds = Dataset.open(tmp_path / "out")
    samples = {s.id: s for s in ds}
    assert set(samples) == {"benign_1", "malignant_1", "normal_1"}
    benign = samples["benign_1"]
    assert benign.image.ndim == 2 and np.array_equal(benign.image, images["benign_1"])
    expected = np.maximum(box(benign.image.shape, 2, 2, 8, 1), box(benign.image.shape, 20, 30, 6, 1))
    assert np.array_equal(benign.mask, expected)
    assert benign.record.attributes == {"pathology": "benign"}
    assert samples["normal_1"].mask.max() == 0
    assert ds.info.attributes == {"pathology": ["benign", "malignant", "normal"]}


def test_busi_gives_near_duplicates_one_subject(tmp_path: Path):
    write_busi(tmp_path / "busi")
    smooth = ndimage.gaussian_filter(np.random.default_rng(5).normal(size=(60, 80)), 6)
    scan = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    copy = np.asarray(Image.fromarray(scan[1:, 1:]).resize((100, 72)))  # cropped by a pixel and rescaled
    for name, image in (("benign (2)", scan), ("malignant (2)", copy)):
        folder = tmp_path / "busi" / name.split()[0]
        write_png(folder / f"{name}.png", image)
        write_png(folder / f"{name}_mask.png", box(image.shape, 10, 10, 8))
    summary = import_dataset("busi", tmp_path / "busi", tmp_path / "out")
    assert "; 1 group of near-duplicate images (2 images, largest 2; correlation > 0.95)" in summary.describe()
    subjects = {r.id: r.subject for r in Dataset.open(tmp_path / "out").records}
    assert subjects["benign_2"] == subjects["malignant_2"] == "benign_2"
    assert [subjects[i] for i in ("benign_1", "malignant_1", "normal_1")] == ["benign_1", "malignant_1", "normal_1"]
    import_dataset("busi", tmp_path / "busi", tmp_path / "strict", near_duplicate_threshold=1.0)
    assert len({r.subject for r in Dataset.open(tmp_path / "strict").records}) == 5


def test_near_duplicate_groups_are_transitive():
    angles = np.radians([0.0, 15.0, 30.0, 90.0, 180.0])  # a~b and b~c (cos 15 > 0.95) but not a~c (cos 30)
    rows = np.stack([np.cos(angles), np.sin(angles), np.zeros(5)], axis=1)
    rows = np.vstack([rows, [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert near_duplicate_groups(rows, 0.95) == [[0, 1, 2], [5, 6]]
    assert near_duplicate_groups(rows, 0.99) == [[5, 6]]


def test_busi_mask_without_image_is_a_missing_pair(tmp_path: Path):
    write_busi(tmp_path / "busi")
    write_png(tmp_path / "busi" / "malignant" / "malignant (9)_mask.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"malignant \(9\)_mask\.png: missing pair"):
        import_dataset("busi", tmp_path / "busi", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _write_camus_frame(path: Path, array: np.ndarray, spacing=(0.3, 0.15)) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(spacing) + (1.0,) * (array.ndim - 2))
    sitk.WriteImage(image, str(path))


def write_camus(root: Path, extension: str, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two patients, 2CH/4CH x ED/ES; a half sequence to skip; Info_2CH.cfg for one patient."""
    rng = np.random.default_rng(seed)
    frames = {}
    for patient in ("patient0001", "patient0002"):
        folder = root / patient
        folder.mkdir(parents=True)
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                image = speckle(rng, (36, 28))
                labels = np.zeros(image.shape, np.uint8)
                labels[5:15, 5:20], labels[15:25, 5:20], labels[25:32, 8:16] = 1, 2, 3
                stem = f"{patient}_{view}_{phase}"
                _write_camus_frame(folder / f"{stem}{extension}", image)
                _write_camus_frame(folder / f"{stem}_gt{extension}", labels)
                frames[stem] = (image, labels)
        _write_camus_frame(folder / f"{patient}_2CH_half_sequence{extension}", speckle(rng, (3, 36, 28)))
    (root / "patient0001" / "Info_2CH.cfg").write_text("ED: 1\nES: 12\nImageQuality: Good\nEF: 55\n")
    return frames


@pytest.mark.parametrize("extension", [".mhd", ".nii.gz"])
def test_camus_reads_frames_labels_view_phase_and_skips_sequences(tmp_path: Path, extension: str):
    frames = write_camus(tmp_path / "camus", extension)
    summary = import_dataset("camus", tmp_path / "camus", tmp_path / "out")
    assert summary.pairs == 8
    ds = Dataset.open(tmp_path / "out")
    assert ds.info.labels == {"0": "background", "1": "lv_endocardium", "2": "lv_myocardium", "3": "left_atrium"}
    samples = {s.id: s for s in ds}
    assert set(samples) == set(frames)
    sample = samples["patient0001_4CH_ES"]
    assert np.array_equal(sample.image, frames["patient0001_4CH_ES"][0])
    assert np.array_equal(sample.mask, frames["patient0001_4CH_ES"][1])
    assert sample.record.attributes == {"view": "4CH", "phase": "ES"}
    assert sample.record.subject == "patient0001"
    assert sample.record.spacing_mm == pytest.approx(0.3)
    assert float(sample.record.extra["spacing_y_mm"]) == pytest.approx(0.15)
    assert samples["patient0001_2CH_ED"].record.extra["image_quality"] == "Good"
    assert samples["patient0002_2CH_ED"].record.extra["image_quality"] == ""


def test_camus_nifti_written_with_nibabel_is_read(tmp_path: Path):
    import nibabel as nib

    folder = tmp_path / "camus" / "patient0007"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    image = speckle(rng, (30, 20))
    labels = np.zeros_like(image)
    labels[4:10, 4:10] = 2
    for name, array in (("patient0007_2CH_ED.nii.gz", image), ("patient0007_2CH_ED_gt.nii.gz", labels)):
        nib.save(nib.Nifti1Image(array[:, :, None], np.diag([0.2, 0.2, 1.0, 1.0])), str(folder / name))
    import_dataset("camus", tmp_path / "camus", tmp_path / "out")
    sample = Dataset.open(tmp_path / "out")[0]
    assert sample.image.shape == sample.mask.shape
    assert sorted(np.unique(sample.mask).tolist()) == [0, 2]
    assert (sample.mask == 2).sum() == 36 and sample.record.spacing_mm == pytest.approx(0.2)
    # whatever axis order the reader uses, image and labels stay aligned
    assert np.array_equal(np.sort(sample.image.ravel()), np.sort(image.ravel()))


def test_camus_missing_label_map_and_bad_labels(tmp_path: Path):
    write_camus(tmp_path / "camus", ".mhd")
    _write_camus_frame(tmp_path / "camus" / "patient0002" / "patient0002_4CH_ES_gt.mhd", np.full((36, 28), 7, np.uint8))
    with pytest.raises(DataError, match=r"patient0002_4CH_ES_gt\.mhd: mask values \[7\] outside the declared labels"):
        import_dataset("camus", tmp_path / "camus", tmp_path / "out")
    for path in (tmp_path / "camus" / "patient0002").glob("patient0002_4CH_ES_gt.*"):
        path.unlink()
    with pytest.raises(DataError, match=r"patient0002_4CH_ES\.mhd: missing pair"):
        import_dataset("camus", tmp_path / "camus", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_camus_truncated_raw_file_is_named(tmp_path: Path):
    write_camus(tmp_path / "camus", ".mhd")
    raw = next((tmp_path / "camus" / "patient0001").glob("patient0001_2CH_ED.raw"))
    raw.write_bytes(raw.read_bytes()[:10])
    with pytest.raises(DataError, match=r"patient0001_2CH_ED\.mhd: unreadable or truncated"):
        import_dataset("camus", tmp_path / "camus", tmp_path / "out")


def test_intensity_casting_keeps_8_and_16_bit_and_rescales_the_rest():
    assert to_uint8_or_16(np.array([[0, 200]], np.int16)).dtype == np.uint8
    assert to_uint8_or_16(np.array([[0, 1000]], np.int32)).dtype == np.uint16
    scaled = to_uint8_or_16(np.array([[-1.0, 0.0, 1.0]], np.float32))
    assert scaled.dtype == np.uint8 and scaled.tolist() == [[0, 128, 255]]


def test_folder_pairs_by_template_maps_labels_and_groups_subjects(tmp_path: Path):
    rng = np.random.default_rng(0)
    (tmp_path / "src" / "img").mkdir(parents=True)
    (tmp_path / "src" / "lbl").mkdir()
    for name in ("p1_a", "p1_b", "p2_a"):
        write_png(tmp_path / "src" / "img" / f"{name}.png", (speckle(rng).astype(np.uint16) * 200))
        mask = box((40, 56), 3, 3, 10, 255)
        mask[30:35, 30:35] = 128
        write_png(tmp_path / "src" / "lbl" / f"{name}_mask.png", mask)
    summary = import_dataset(
        "folder",
        tmp_path / "src",
        tmp_path / "out",
        images="img/*.png",
        masks="lbl/{stem}_mask.png",
        label_map=parse_label_map(["255:1", "128:2"]),
        label_names=["lesion", "vessel"],
        subject_pattern=r"^(p\d+)_",
        spacing_mm=0.1,
    )
    assert summary.pairs == 3
    ds = Dataset.open(tmp_path / "out")
    assert ds.info.labels == {"0": "background", "1": "lesion", "2": "vessel"}
    assert [r.subject for r in ds.records] == ["p1", "p1", "p2"]
    sample = ds[0]
    assert sample.image.dtype == np.uint16  # 16-bit images stay 16-bit
    assert sorted(np.unique(sample.mask).tolist()) == [0, 1, 2]
    assert sample.record.extra["source_image"] == "img/p1_a.png"


def _write_named_pairs(root: Path, stems: list[str]) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for stem in stems:
        write_png(root / "images" / f"{stem}.png", speckle(rng))
        write_png(root / "images" / f"{stem}_gt.png", box((40, 56), 3, 3, 10, 2))
    return root


NAMED = dict(images="images/*_E[DS].png", masks="images/{stem}_gt.png", label_names=["a", "b"])


def test_folder_name_pattern_gives_subject_and_declared_attributes(tmp_path: Path):
    src = _write_named_pairs(tmp_path / "src", ["p01_4CH_ES", "p01_2CH_ED", "p02_4CH_ED"])
    pattern = r"(?P<subject>p\d+)_(?P<view>2CH|4CH)_(?P<phase>ED|ES)"
    import_dataset("folder", src, tmp_path / "out", name_pattern=pattern, **NAMED)
    ds = Dataset.open(tmp_path / "out")
    assert ds.info.attributes == {"view": ["2CH", "4CH"], "phase": ["ED", "ES"]}
    assert [(r.id, r.subject, r.attributes) for r in ds.records] == [
        ("p01_2CH_ED", "p01", {"view": "2CH", "phase": "ED"}),
        ("p01_4CH_ES", "p01", {"view": "4CH", "phase": "ES"}),
        ("p02_4CH_ED", "p02", {"view": "4CH", "phase": "ED"}),
    ]
    # without a subject group each image is its own subject
    import_dataset("folder", src, tmp_path / "own", name_pattern=r"_(?P<view>\dCH)_", **NAMED)
    ds = Dataset.open(tmp_path / "own")
    assert ds.info.attributes == {"view": ["2CH", "4CH"]}
    assert [r.subject for r in ds.records] == [r.id for r in ds.records]


def test_folder_name_pattern_refuses_what_it_cannot_use(tmp_path: Path):
    src = _write_named_pairs(tmp_path / "src", ["p01_2CH_ED", "x_ES"])
    with pytest.raises(DataError, match=r"x_ES\.png: name does not match --name-pattern"):
        import_dataset("folder", src, tmp_path / "out", name_pattern=r"(?P<subject>p\d+)_", **NAMED)
    with pytest.raises(DataError, match="--subject-pattern and --name-pattern: give one of them"):
        import_dataset("folder", src, tmp_path / "out", name_pattern="(?P<subject>.)", subject_pattern="(.)", **NAMED)
    with pytest.raises(DataError, match="needs named groups"):
        import_dataset("folder", src, tmp_path / "out", name_pattern=r"(p\d+)", **NAMED)
    with pytest.raises(DataError, match=r"group names \['split'\] are manifest columns"):
        import_dataset("folder", src, tmp_path / "out", name_pattern=r"_(?P<split>E.)", **NAMED)
    with pytest.raises(DataError, match=r"x_ES\.png: --name-pattern groups \['subject'\] match nothing"):
        import_dataset("folder", src, tmp_path / "out", name_pattern=r"^(?P<subject>p?\d*)", **NAMED)
    assert not (tmp_path / "out").exists()


def test_folder_label_map_parsing_and_defaults():
    assert parse_label_map(["255:1,128:2", "7:3"]) == {255: 1, 128: 2, 7: 3}
    with pytest.raises(DataError, match="not SOURCE:TARGET"):
        parse_label_map(["255"])
    with pytest.raises(DataError, match="out of range"):
        parse_label_map(["1:300"])


def _write_nnunet(root: Path, labels: dict, channels: int = 1) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_png(root / "imagesTr" / "case_0000.png", np.zeros((8, 8), np.uint8))
    write_png(root / "labelsTr" / "case.png", np.ones((8, 8), np.uint8))
    channel_names = {str(i): "US" for i in range(channels)}
    data = {"channel_names": channel_names, "labels": labels, "numTraining": 1, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def test_nnunet_import_reads_cases_and_refuses_what_does_not_map(tmp_path: Path):
    src = _write_nnunet(tmp_path / "Dataset012_Toy", {"background": 0, "organ": 1})
    import_dataset("nnunet", src, tmp_path / "out")
    ds = Dataset.open(tmp_path / "out")
    assert ds.info.name == "Toy" and ds.info.labels == {"0": "background", "1": "organ"}
    assert [r.id for r in ds.records] == ["case"] and ds[0].mask.max() == 1

    regions = _write_nnunet(tmp_path / "Dataset013_R", {"background": 0, "whole": [1, 2]})
    with pytest.raises(DataError, match=r"dataset\.json: label 'whole' is region-based"):
        import_dataset("nnunet", regions, tmp_path / "out2")
    multi = _write_nnunet(tmp_path / "Dataset014_M", {"background": 0, "x": 1}, channels=2)
    with pytest.raises(DataError, match="2 input channels"):
        import_dataset("nnunet", multi, tmp_path / "out3")
    shared = _write_nnunet(tmp_path / "Dataset015_S", {"background": 0, "head": 1, "skull": 1})
    with pytest.raises(DataError, match="'head' and 'skull' share the value 1"):
        import_dataset("nnunet", shared, tmp_path / "out4")


def test_unknown_format_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DataError, match="unknown import format 'dicom'"):
        import_dataset("dicom", tmp_path, tmp_path / "out")
