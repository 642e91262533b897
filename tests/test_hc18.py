"""HC18 importer: the real subset (493 pairs, circumference within 2%), outline filling, bad outlines."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from factories import imported_once
from PIL import Image
from scipy import ndimage
from skimage.draw import ellipse_perimeter, polygon_perimeter

from sonosynth.data.ellipse import fit_ellipse_to_mask
from sonosynth.data.format import Dataset
from sonosynth.data.imageio import read_image, read_label_map, write_png
from sonosynth.data.importers.hc18 import filled_head_mask, import_hc18
from sonosynth.data.splits import SplitConfig, assign_splits
from sonosynth.data.validate import check_dataset
from sonosynth.errors import DataError


@pytest.fixture(scope="session")
def hc18_dataset(hc18: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real HC18 subset imported once per test session."""
    return imported_once(tmp_path_factory, "hc18_imported", lambda out: import_hc18(hc18, out))


def test_real_hc18_yields_493_pairs_with_spacing_subjects_and_hc(hc18_dataset: Path):
    ds = Dataset.open(hc18_dataset)
    assert len(ds) == 493
    assert ds.info.labels == {"0": "background", "1": "head"}
    by_id = {r.id: r for r in ds.records}
    assert by_id["010_HC"].subject == by_id["010_2HC"].subject == "010"
    assert by_id["000_HC"].spacing_mm == pytest.approx(0.069135804)
    assert float(by_id["000_HC"].attributes["hc_mm"]) == pytest.approx(44.3)
    assert all(r.spacing_mm and float(r.attributes["hc_mm"]) > 0 for r in ds.records)
    sample = ds[0]
    assert sample.image.shape == (540, 800) and sample.image.dtype == np.uint8
    assert set(np.unique(sample.mask).tolist()) == {0, 1}


def test_real_hc18_circumference_of_fitted_ellipse_within_2_percent(hc18_dataset: Path):
    ds = Dataset.open(hc18_dataset)
    errors = {}
    for record in ds.records:
        mask = read_label_map(ds.path_of(record, "mask"))
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        ellipse = fit_ellipse_to_mask(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])  # crop: same shape, faster
        assert ellipse is not None, record.id
        measured = ellipse.circumference(record.spacing_mm)
        errors[record.id] = measured / float(record.attributes["hc_mm"]) - 1.0
    values = np.array(list(errors.values()))
    worst = max(errors, key=lambda k: abs(errors[k]))
    print(
        f"\nHC18 circumference error over {len(values)} images: median {100 * np.median(values):+.2f}%, "
        f"median |err| {100 * np.median(np.abs(values)):.2f}%, worst {100 * errors[worst]:+.2f}% ({worst})"
    )
    assert len(values) == 493
    assert np.all(np.abs(values) < 0.02), f"worst {worst}: {100 * errors[worst]:+.2f}%"


def test_real_hc18_passes_check_and_splits_by_subject(hc18: Path, hc18_dataset: Path):
    report = check_dataset(hc18_dataset)
    assert report.ok, report.problems[:3]
    assert report.records == 493
    source_sizes = Counter(_png_size(p) for p in (hc18 / "training_set").glob("*HC.png"))
    assert report.image_sizes == source_sizes  # kept at original size (most are 800x540)
    assert report.image_sizes.most_common(1)[0][0] == (800, 540)
    assert report.label_images[1] == 493 and not report.empty_masks

    records = assign_splits(Dataset.open(hc18_dataset).records, SplitConfig(val=0.15, test=0.15, seed=3))
    split_of_subject: dict[str, set[str]] = {}
    for r in records:
        split_of_subject.setdefault(r.subject, set()).add(r.split)
    assert all(len(s) == 1 for s in split_of_subject.values())
    assert any(sum(r.subject == s for r in records) > 1 for s in split_of_subject)  # multi-image subjects exist


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _hc18_like_folder(root: Path, annotations: dict[str, np.ndarray], images: dict[str, np.ndarray]) -> Path:
    """A folder in the official HC18 layout with the given annotations (outline or filled)."""
    (root / "training_set").mkdir(parents=True)
    with open(root / "training_set_pixel_size_and_HC.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "pixel size(mm)", "head circumference (mm)"])
        for stem, annotation in annotations.items():
            write_png(root / "training_set" / f"{stem}.png", images[stem])
            write_png(root / "training_set" / f"{stem}_Annotation.png", annotation)
            writer.writerow([f"{stem}.png", 0.1, 50.0])
    return root


def test_outlines_drawn_from_real_filled_masks_are_filled_back(hc18: Path, tmp_path: Path):
    stems = ["000_HC", "010_2HC", "014_3HC", "123_HC"]
    with open(hc18 / "training_set_pixel_size_and_HC.csv", newline="") as fh:
        table = {row[0]: row for row in csv.reader(fh)}
    filled, outlines, images = {}, {}, {}
    for stem in stems:
        filled[stem] = read_image(hc18 / "training_set" / f"{stem}_Annotation.png") > 0
        images[stem] = read_image(hc18 / "training_set" / f"{stem}.png")
        # a 2-3 px thick outline, like the official release's drawn ellipse
        outlines[stem] = ((filled[stem] & ~ndimage.binary_erosion(filled[stem], iterations=2)) * 255).astype(np.uint8)
    src = _hc18_like_folder(tmp_path / "src", outlines, images)
    with open(src / "training_set_pixel_size_and_HC.csv", "w", newline="") as fh:  # real pixel sizes and HC
        writer = csv.writer(fh)
        writer.writerow(["filename", "pixel size(mm)", "head circumference (mm)"])
        for stem in stems:
            writer.writerow(table[f"{stem}.png"])
    summary = import_hc18(src, tmp_path / "out")
    assert summary.pairs == 4
    ds = Dataset.open(tmp_path / "out")
    for sample in ds:
        original = filled[sample.id]
        mask = sample.mask.astype(bool)
        iou = (mask & original).sum() / (mask | original).sum()
        assert iou > 0.97, (sample.id, iou)
        hc = fit_ellipse_to_mask(mask).circumference(sample.record.spacing_mm)
        assert abs(hc / float(sample.record.attributes["hc_mm"]) - 1) < 0.02, sample.id
        assert np.array_equal(sample.image, images[sample.id])


def _ring(shape=(120, 160), centre=(60, 80), axes=(35, 55), orientation=0.3) -> np.ndarray:
    ring = np.zeros(shape, np.uint8)
    rr, cc = ellipse_perimeter(*centre, *axes, orientation=orientation, shape=shape)
    ring[rr, cc] = 255
    return ring


def test_synthetic_one_pixel_outline_is_filled_to_the_ellipse():
    ring = _ring()
    filled = filled_head_mask(ring, "ring.png")
    truth = ndimage.binary_fill_holes(ring > 0)  # the region the drawn outline encloses
    iou = (filled & truth).sum() / (filled | truth).sum()
    assert iou > 0.95
    assert not filled[0, 0] and filled[60, 80]


def test_filled_annotation_is_taken_as_it_is():
    filled = np.zeros((60, 80), np.uint8)
    filled[10:50, 20:70] = 255  # not even an ellipse: a filled annotation is trusted
    assert np.array_equal(filled_head_mask(filled, "box.png"), filled > 0)


@pytest.mark.parametrize(
    ("kind", "message"),
    [("open", "not closed"), ("two", "separate pieces"), ("star", "not ellipse-like")],
)
def test_outline_that_cannot_be_filled_names_the_file(kind: str, message: str):
    if kind == "open":
        annotation = _ring()
        annotation[:, 80:] = 0  # half an ellipse: no closed region
    elif kind == "two":
        annotation = np.maximum(_ring(axes=(20, 25), centre=(40, 40)), _ring(axes=(15, 20), centre=(80, 120)))
    else:
        angles = np.linspace(0, 2 * np.pi, 11)[:-1]
        radius = np.where(np.arange(10) % 2 == 0, 50, 20)
        annotation = np.zeros((120, 160), np.uint8)
        rr, cc = polygon_perimeter(60 + radius * np.sin(angles), 80 + radius * np.cos(angles), shape=annotation.shape)
        annotation[rr, cc] = 255
    with pytest.raises(DataError, match=rf"^bad_Annotation\.png: .*{message}"):
        filled_head_mask(annotation, "bad_Annotation.png")


def test_missing_csv_row_and_orphan_annotation_are_errors(tmp_path: Path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 160), dtype=np.uint8)
    src = _hc18_like_folder(tmp_path / "src", {"001_HC": _ring()}, {"001_HC": image})
    write_png(src / "training_set" / "002_HC_Annotation.png", _ring())
    with pytest.raises(DataError, match=r"002_HC_Annotation\.png: missing pair"):
        import_hc18(src, tmp_path / "out")
    (src / "training_set" / "002_HC_Annotation.png").unlink()
    write_png(src / "training_set" / "003_HC.png", image)
    write_png(src / "training_set" / "003_HC_Annotation.png", _ring())
    with pytest.raises(DataError, match=r"003_HC\.png: no row"):
        import_hc18(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
