"""HC18 fetal head ultrasound (van den Heuvel et al. 2018, doi 10.5281/zenodo.1327317).

Layout: `training_set/NNN_HC.png` + `NNN_HC_Annotation.png` (also `NNN_2HC.png` for a second image
of subject NNN) and `training_set_pixel_size_and_HC.csv` (filename, pixel size, head circumference).
The official release draws the head as an ellipse OUTLINE; some copies have it FILLED. Both are
accepted: an outline is filled by fitting an ellipse to its pixels and rasterising it, because the
challenge defines the head circumference on that ellipse.
"""

from __future__ import annotations

import csv
import io
import math
import re
from contextlib import closing
from pathlib import Path

import numpy as np
from scipy import ndimage

from sonosynth.data.ellipse import Ellipse, fit_ellipse_to_points
from sonosynth.data.format import DatasetInfo, DatasetWriter
from sonosynth.data.imageio import read_image, read_label_map
from sonosynth.data.importers.pairing import (
    ImportSummary,
    check_same_size,
    prefetch,
    progress,
    require_found,
    require_source_folder,
)
from sonosynth.errors import DataError
from sonosynth.files import read_text

IMAGE_NAME = re.compile(r"^(?P<subject>\d+)_(?P<repeat>\d*)HC\.png$")
CSV_NAME = "training_set_pixel_size_and_HC.csv"
# An outline's fitted ellipse must pass within this many pixels of its pixels on average ...
MAX_MEAN_OUTLINE_DISTANCE_PX = 3.0
# ... and enclose (almost) the same region as the outline does.
MIN_FILL_AGREEMENT_IOU = 0.9


def hc18_info() -> DatasetInfo:
    return DatasetInfo(
        name="hc18",
        organ="fetal head",
        labels={"0": "background", "1": "head"},
        attributes={"hc_mm": None},
        source="HC18 grand challenge, van den Heuvel et al., PLoS ONE 13(8) 2018, doi 10.5281/zenodo.1327317",
        license="CC BY 4.0",
        description="2D fetal head ultrasound; label 1 is the head ellipse; hc_mm is the reference head circumference",
    )


def import_hc18(
    src: str | Path, out: str | Path, *, csv_path: str | Path | None = None, overwrite: bool = False
) -> ImportSummary:
    """Import an HC18 training folder (or the folder holding `training_set/` and the CSV)."""
    src = require_source_folder(src)
    image_dir = src / "training_set" if (src / "training_set").is_dir() else src
    table = read_pixel_size_table(Path(csv_path) if csv_path else find_csv(src, image_dir))
    images = require_found(
        sorted(p for p in image_dir.iterdir() if IMAGE_NAME.match(p.name)), image_dir, "NNN_HC.png images"
    )
    _check_orphan_annotations(image_dir, images)
    pairs = []
    for image_path in images:  # every pair and CSV row is checked before any pixel is read
        mask_path = image_path.with_name(image_path.stem + "_Annotation.png")
        if not mask_path.is_file():
            raise DataError(f"{image_path}: missing pair, annotation {mask_path.name} not found")
        if image_path.name not in table:
            raise DataError(f"{image_path}: no row for {image_path.name} in the pixel-size CSV")
        pairs.append((image_path, mask_path))

    def load(pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = pair
        image = read_image(image_path)
        annotation = read_label_map(mask_path)
        check_same_size(image, annotation, image_path, mask_path)
        return image, filled_head_mask(annotation, str(mask_path)).astype(np.uint8)

    summary = ImportSummary(Path(out))
    with DatasetWriter(out, hc18_info(), overwrite=overwrite) as writer, closing(prefetch(load, pairs)) as loads:
        loaded = zip(pairs, loads, strict=True)
        for (image_path, mask_path), (image, mask) in progress(loaded, "hc18", total=len(pairs)):
            spacing_mm, hc_mm = table[image_path.name]
            record_id = image_path.stem
            writer.add(
                record_id,
                image,
                mask,
                subject=IMAGE_NAME.match(image_path.name)["subject"],
                spacing_mm=spacing_mm,
                source=str(mask_path),
                hc_mm=f"{hc_mm:g}",
            )
            summary.note(record_id, mask)
    return summary


def find_csv(src: Path, image_dir: Path) -> Path:
    for folder in dict.fromkeys((src, image_dir, image_dir.parent)):
        candidate = folder / CSV_NAME
        if candidate.is_file():
            return candidate
    raise DataError(f"{src}: {CSV_NAME} not found beside the images (pass --csv)")


def read_pixel_size_table(path: Path) -> dict[str, tuple[float, float]]:
    """filename -> (pixel size in mm, head circumference in mm)."""
    if not path.is_file():
        raise DataError(f"{path}: pixel-size CSV not found")
    table: dict[str, tuple[float, float]] = {}
    with io.StringIO(read_text(path, "pixel-size CSV"), newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or len(header) < 3:
            raise DataError(f"{path}: expected columns filename, pixel size(mm), head circumference (mm)")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                pixel, circumference = float(row[1]), float(row[2])
            except (IndexError, ValueError):
                raise DataError(f"{path}: line {line}: expected filename, pixel size, circumference") from None
            # Physically possible: a pixel of (0, 5] mm and a head circumference of (0, 1000] mm.
            if not (math.isfinite(pixel) and 0 < pixel <= 5 and math.isfinite(circumference)
                    and 0 < circumference <= 1000):
                raise DataError(f"{path}: line {line}: pixel size {row[1]} mm or head circumference {row[2]} mm "
                                "is not physically possible")
            if row[0].strip() in table:
                raise DataError(f"{path}: line {line}: {row[0].strip()} is listed twice")
            table[row[0].strip()] = (pixel, circumference)
    return table


def _check_orphan_annotations(image_dir: Path, images: list[Path]) -> None:
    names = {p.name for p in images}
    for annotation in sorted(image_dir.glob("*_Annotation.png")):
        image_name = annotation.name.replace("_Annotation.png", ".png")
        if image_name not in names:
            raise DataError(f"{annotation}: missing pair, image {image_name} not found")


def filled_head_mask(annotation: np.ndarray, where: str) -> np.ndarray:
    """The filled head region of an HC18 annotation, whether drawn filled or as an outline."""
    foreground = annotation > 0
    if not foreground.any():
        return foreground
    # Morphology on the bounding box (plus a margin) only: the same answer, several times faster.
    rows, cols = np.nonzero(foreground.any(axis=1))[0], np.nonzero(foreground.any(axis=0))[0]
    box = (slice(max(rows[0] - 2, 0), rows[-1] + 3), slice(max(cols[0] - 2, 0), cols[-1] + 3))
    if not is_outline(foreground[box]):
        return foreground
    return fill_outline(foreground, where)


def is_outline(foreground: np.ndarray) -> bool:
    """A thin curve (most pixels vanish under one erosion) or a ring whose hole outweighs it."""
    area = int(foreground.sum())
    eroded = int(ndimage.binary_erosion(foreground).sum())
    if eroded < 0.5 * area:
        return True
    holes = int(ndimage.binary_fill_holes(foreground).sum()) - area
    return holes > area


def fill_outline(outline: np.ndarray, where: str) -> np.ndarray:
    """Fit an ellipse to outline pixels and rasterise it; refuse curves that are no closed ellipse."""
    components, count = ndimage.label(outline, structure=np.ones((3, 3)))
    if count > 1:
        sizes = np.bincount(components.ravel())[1:]
        if np.sort(sizes)[-2] >= 10:
            raise DataError(f"{where}: annotation outline has {count} separate pieces, cannot fill one closed region")
    enclosed = ndimage.binary_fill_holes(outline)
    if int(enclosed.sum()) - int(outline.sum()) <= 0:
        raise DataError(f"{where}: annotation outline is not closed, cannot fill it into one region")
    ys, xs = np.nonzero(outline)
    ellipse = fit_ellipse_to_points(np.column_stack([xs, ys]))
    if ellipse is None:
        raise DataError(f"{where}: no ellipse fits the annotation outline, cannot fill it")
    distance = _mean_radial_distance(ellipse, xs, ys)
    if distance > MAX_MEAN_OUTLINE_DISTANCE_PX:
        raise DataError(
            f"{where}: annotation outline is not ellipse-like "
            f"(pixels {distance:.1f} px from the fitted ellipse on average)"
        )
    filled = ellipse.rasterize(outline.shape)
    iou = float((filled & enclosed).sum()) / max(1.0, float((filled | enclosed).sum()))
    if iou < MIN_FILL_AGREEMENT_IOU:
        raise DataError(f"{where}: fitted ellipse disagrees with the outlined region (IoU {iou:.2f})")
    return filled


def _mean_radial_distance(ellipse: Ellipse, xs: np.ndarray, ys: np.ndarray) -> float:
    """Mean distance of points from the ellipse, measured along the ray from its centre."""
    dx, dy = xs - ellipse.cx, ys - ellipse.cy
    c, s = math.cos(ellipse.theta), math.sin(ellipse.theta)
    u, v = dx * c + dy * s, -dx * s + dy * c
    radius = np.hypot(u, v)
    scaled = np.sqrt((u / ellipse.a) ** 2 + (v / ellipse.b) ** 2)
    on_curve = np.divide(radius, scaled, out=np.zeros_like(radius), where=scaled > 0)
    return float(np.mean(np.abs(radius - on_curve)))
