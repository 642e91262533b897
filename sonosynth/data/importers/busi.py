"""BUSI breast ultrasound (Al-Dhabyani et al. 2020): `benign/`, `malignant/`, `normal/` folders.

Each folder holds `X.png` with `X_mask.png`; a few images have several lesions drawn in separate
files (`X_mask_1.png`, ...), which are merged into one label map. Images are stored as RGB
although they are grayscale; `read_image` converts them exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

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


def busi_info() -> DatasetInfo:
    return DatasetInfo(
        name="busi",
        labels={"0": "background", "1": "lesion"},
        attributes={"pathology": list(PATHOLOGIES)},
        source="BUSI, Al-Dhabyani et al., Data in Brief 28, 2020, doi 10.1016/j.dib.2019.104863",
        license="CC0 1.0",
        description="2D breast ultrasound; label 1 is the lesion (normal images have empty masks)",
    )


def import_busi(src: str | Path, out: str | Path, *, overwrite: bool = False) -> ImportSummary:
    """Import the BUSI folder (the one holding benign/, malignant/, normal/)."""
    src = require_source_folder(src)
    cases = require_found(_find_cases(src), src, "benign/, malignant/ or normal/ images")
    summary = ImportSummary(Path(out))
    with DatasetWriter(out, busi_info(), overwrite=overwrite) as writer:
        for pathology, image_path, mask_paths in progress(cases, "busi"):
            image = read_image(image_path)
            mask = np.zeros(image.shape, dtype=np.uint8)
            for mask_path in mask_paths:
                part = read_label_map(mask_path)
                check_same_size(image, part, image_path, mask_path)
                mask |= (part > 0).astype(np.uint8)
            record_id = safe_id(image_path.stem)
            writer.add(
                record_id,
                image,
                mask,
                subject=record_id,
                source=str(image_path),
                pathology=pathology,
            )
            summary.note(record_id, mask)
    return summary


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
