"""BUSI breast ultrasound (Al-Dhabyani et al. 2020): `benign/`, `malignant/`, `normal/` folders.

Each folder holds `X.png` with `X_mask.png`; a few images have several lesions drawn in separate
files (`X_mask_1.png`, ...), which are merged into one label map. Images are stored as RGB
although they are grayscale; `read_image` converts them exactly.

BUSI has no patient ids but holds near-duplicate images (the same scan saved twice, slightly
cropped or rescaled, sometimes under two classes). So that a split by subject keeps them on one
side, every image is shrunk to 32x32 (box filter, aspect ratio not kept, so that copies cropped
by a few pixels still line up), made zero-mean and unit-norm, and images whose thumbnails
correlate above `near_duplicate_threshold` (default 0.95) are joined into one group, transitively.
Every record of a group gets the group's first id in sorted order as its subject; an image
without near-duplicates is its own subject.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from sonosynth.data.format import DatasetInfo, DatasetWriter
from sonosynth.data.imageio import read_image, read_label_map
from sonosynth.data.importers.pairing import (
    ImportSummary,
    check_same_size,
    progress,
    require_found,
    require_source_folder,
    safe_id,
)
from sonosynth.errors import DataError

PATHOLOGIES = ("benign", "malignant", "normal")
MASK_NAME = re.compile(r"^(?P<stem>.+)_mask(_\d+)?$")
NEAR_DUPLICATE_THRESHOLD = 0.95
THUMBNAIL_SIZE = 32


def busi_info() -> DatasetInfo:
    return DatasetInfo(
        name="busi",
        organ="breast",
        labels={"0": "background", "1": "lesion"},
        attributes={"pathology": list(PATHOLOGIES)},
        source="BUSI, Al-Dhabyani et al., Data in Brief 28, 2020, doi 10.1016/j.dib.2019.104863",
        license="CC0 1.0",
        description="2D breast ultrasound; label 1 is the lesion (normal images have empty masks)",
    )


def import_busi(
    src: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    near_duplicate_threshold: float = NEAR_DUPLICATE_THRESHOLD,
) -> ImportSummary:
    """Import the BUSI folder (the one holding benign/, malignant/, normal/).

    Near-duplicate images share a subject (see the module docstring).
    """
    if not 0.0 <= near_duplicate_threshold <= 1.0:
        raise DataError(f"near-duplicate threshold {near_duplicate_threshold}: must be a correlation in [0, 1]")
    src = require_source_folder(src)
    cases = require_found(_find_cases(src), src, "benign/, malignant/ or normal/ images")
    summary = ImportSummary(Path(out))
    with DatasetWriter(out, busi_info(), overwrite=overwrite) as writer:
        records, thumbnails = [], []
        for pathology, image_path, mask_paths in progress(cases, "busi"):
            image = read_image(image_path)
            mask = np.zeros(image.shape, dtype=np.uint8)
            for mask_path in mask_paths:
                part = read_label_map(mask_path)
                check_same_size(image, part, image_path, mask_path)
                mask |= (part > 0).astype(np.uint8)
            record_id = safe_id(image_path.stem)
            records.append(
                writer.add(
                    record_id,
                    image,
                    mask,
                    subject=record_id,
                    source=str(image_path),
                    pathology=pathology,
                )
            )
            thumbnails.append(thumbnail(image))
            summary.note(record_id, mask)
        groups = near_duplicate_groups(np.stack(thumbnails), near_duplicate_threshold)
        for group in groups:
            subject = min(records[i].id for i in group)
            for i in group:
                records[i].subject = subject
    sizes = [len(group) for group in groups]
    plural = "" if len(groups) == 1 else "s"
    summary.findings.append(
        f"{len(groups)} group{plural} of near-duplicate images ({sum(sizes)} images, largest {max(sizes, default=0)};"
        f" correlation > {near_duplicate_threshold:g}) share a subject each"
    )
    return summary


def thumbnail(image: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """The image shrunk to size x size (box filter), flattened, zero-mean and unit-norm (zeros if flat)."""
    small = Image.fromarray(image.astype(np.float32)).resize((size, size), Image.Resampling.BOX)
    vector = np.asarray(small, dtype=np.float64).ravel()
    vector -= vector.mean()
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 1e-9 else vector


def near_duplicate_groups(thumbnails: np.ndarray, threshold: float) -> list[list[int]]:
    """Indices of the rows that are linked, transitively, by a correlation above threshold.

    Rows are thumbnails from `thumbnail`, so their dot product is the correlation. Only groups of
    two or more are returned, each sorted, in order of their first index.
    """
    linked = thumbnails @ thumbnails.T > threshold
    _, labels = connected_components(csr_matrix(linked), directed=False)
    shared = np.flatnonzero(np.bincount(labels) > 1)
    groups = [np.flatnonzero(labels == k).tolist() for k in shared]
    return sorted(groups, key=lambda group: group[0])


def _find_cases(src: Path) -> list[tuple[str, Path, list[Path]]]:
    """(pathology, image, masks) for every image; an image without a mask or a stray mask is an error."""
    cases = []
    for pathology in PATHOLOGIES:
        folder = src / pathology
        if not folder.is_dir():
            continue
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
                continue
            match = MASK_NAME.match(path.stem)
            if match:
                masks.setdefault(match["stem"], []).append(path)
            else:
                images[path.stem] = path
        for stem, mask_paths in masks.items():
            if stem not in images:
                raise DataError(f"{mask_paths[0]}: missing pair, no image {stem}.png beside this mask")
        for stem, image_path in images.items():
            if stem not in masks:
                raise DataError(f"{image_path}: missing pair, no mask {stem}_mask.png found")
            cases.append((pathology, image_path, masks[stem]))
    return cases
