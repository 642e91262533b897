"""CAMUS echocardiography (Leclerc et al. 2019): `patientNNNN/` folders of 2CH/4CH ED/ES frames.

Each frame is `patient0001_2CH_ED.mhd` (+ `.raw`) or `.nii.gz` (newer release) with the label map
`patient0001_2CH_ED_gt.*` (1 LV endocardium, 2 myocardium, 3 left atrium). Full sequences
(`_half_sequence`, `_sequence`) have no labels and are skipped. Reading needs SimpleITK
(`pip install sonosynth[medical]`), which reads both MetaImage and NIfTI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from sonosynth.data.format import DatasetInfo, DatasetWriter
from sonosynth.data.importers.pairing import (
    ImportSummary,
    check_same_size,
    progress,
    require_found,
    require_source_folder,
)
from sonosynth.errors import DataError

FRAME_NAME = re.compile(
    r"^(?P<patient>patient\d+)_(?P<view>[24]CH)_(?P<phase>ED|ES)(?P<gt>_gt)?\.(?P<ext>mhd|nii\.gz|nii)$"
)
VIEWS = ("2CH", "4CH")
PHASES = ("ED", "ES")


def camus_info() -> DatasetInfo:
    return DatasetInfo(
        name="camus",
        organ="heart",
        labels={"0": "background", "1": "lv_endocardium", "2": "lv_myocardium", "3": "left_atrium"},
        attributes={"view": list(VIEWS), "phase": list(PHASES)},
        source="CAMUS, Leclerc et al., IEEE TMI 38(9) 2019, doi 10.1109/TMI.2019.2900516",
        license="see the CAMUS challenge terms of use",
        description="2D echocardiography, apical 2- and 4-chamber views at end-diastole and end-systole",
    )


def import_camus(src: str | Path, out: str | Path, *, overwrite: bool = False) -> ImportSummary:
    """Import a CAMUS folder holding patientNNNN/ folders (searched recursively)."""
    src = require_source_folder(src)
    frames = require_found(_find_frames(src), src, "patientNNNN_{2CH,4CH}_{ED,ES} images")
    summary = ImportSummary(Path(out))
    with DatasetWriter(out, camus_info(), overwrite=overwrite) as writer:
        for image_path, gt_path, match in progress(frames, "camus"):
            image, spacing = read_medical_image(image_path)
            labels, _ = read_medical_image(gt_path)
            check_same_size(image, labels, image_path, gt_path)
            mask = _label_map(labels, gt_path)
            image = to_uint8_or_16(image)
            record_id = f"{match['patient']}_{match['view']}_{match['phase']}"
            extra: dict[str, Any] = {}
            if len(spacing) > 1 and not np.isclose(spacing[1], spacing[0]):
                extra["spacing_y_mm"] = spacing[1]
            quality = _image_quality(image_path.parent, match["view"])
            if quality:
                extra["image_quality"] = quality
            writer.add(
                record_id,
                image,
                mask,
                subject=match["patient"],
                spacing_mm=spacing[0] if spacing else None,
                source=str(gt_path),
                extra=extra,
                view=match["view"],
                phase=match["phase"],
            )
            summary.note(record_id, mask)
    return summary


def _find_frames(src: Path) -> list[tuple[Path, Path, re.Match[str]]]:
    images: dict[str, tuple[Path, re.Match[str]]] = {}
    labels: dict[str, Path] = {}
    for path in sorted(src.rglob("patient*")):
        match = FRAME_NAME.match(path.name)
        if not match or not path.is_file():
            continue  # folders, sequences, .raw payloads, Info_*.cfg
        key = str(path.parent / f"{match['patient']}_{match['view']}_{match['phase']}.{match['ext']}")
        if match["gt"]:
            labels[key] = path
        else:
            images[key] = (path, match)
    for key, gt_path in labels.items():
        if key not in images:
            raise DataError(f"{gt_path}: missing pair, no image {Path(key).name} beside this label map")
    frames = []
    for key, (image_path, match) in images.items():
        if key not in labels:
            raise DataError(f"{image_path}: missing pair, no label map {match['patient']}_..._gt found")
        frames.append((image_path, labels[key], match))
    return frames


def read_medical_image(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A 2-D array and its (x, y) spacing in mm from a MetaImage or NIfTI file."""
    try:
        import SimpleITK as sitk
    except ImportError:
        raise DataError(f"{path}: reading CAMUS needs SimpleITK (pip install 'sonosynth[medical]')") from None
    try:
        itk_image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise DataError(f"{path}: unreadable or truncated image ({reason})") from None
    array = sitk.GetArrayFromImage(itk_image)
    if itk_image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: expected a single-channel image")
    array = np.squeeze(array)
    if array.ndim != 2:
        raise DataError(f"{path}: expected one 2-D frame, got shape {array.shape}")
    return array, tuple(float(s) for s in itk_image.GetSpacing()[:2])


def to_uint8_or_16(array: np.ndarray) -> np.ndarray:
    """Keep integer images that fit uint8/uint16 exactly; rescale anything else to 0..255."""
    if array.dtype in (np.uint8, np.uint16):
        return array
    finite = np.isfinite(array) if array.dtype.kind == "f" else np.ones(array.shape, bool)
    low, high = (float(array[finite].min()), float(array[finite].max())) if finite.any() else (0.0, 0.0)
    integral = array.dtype.kind in "iu" or bool(np.all(np.mod(array[finite], 1) == 0))
    if integral and low >= 0 and high <= 255:
        return np.where(finite, array, 0).astype(np.uint8)
    if integral and low >= 0 and high <= 65535:
        return np.where(finite, array, 0).astype(np.uint16)
    scaled = (np.where(finite, array, low) - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _label_map(labels: np.ndarray, where: Path) -> np.ndarray:
    values = np.unique(labels)
    bad = [v for v in values.tolist() if v not in (0, 1, 2, 3)]
    if bad:
        raise DataError(f"{where}: mask values {bad[:5]} outside the declared labels 0..3")
    return labels.astype(np.uint8)


def _image_quality(folder: Path, view: str) -> str:
    """ImageQuality from Info_2CH.cfg / Info_4CH.cfg when the release ships it."""
    cfg = folder / f"Info_{view}.cfg"
    if not cfg.is_file():
        return ""
    for line in cfg.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "ImageQuality":
            return value.strip()
    return ""
