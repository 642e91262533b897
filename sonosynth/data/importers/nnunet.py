"""nnU-Net v2 raw datasets (`DatasetNNN_NAME/` with imagesTr, labelsTr, dataset.json) as a source.

Only single-channel datasets with integer labels map onto the sonosynth layout; region-based
labels and multi-channel inputs are refused with a clear error. PNG files are read directly;
other file endings (.nii.gz, .mha, ...) go through SimpleITK.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from sonosynth.data.format import DatasetInfo, DatasetWriter
from sonosynth.data.imageio import read_image, read_label_map
from sonosynth.data.importers import pairing
from sonosynth.errors import DataError
from sonosynth.files import read_json

FOLDER_NAME = re.compile(r"^Dataset(?P<id>\d{3})_(?P<name>.+)$")


def read_nnunet_json(src: Path) -> tuple[dict[str, Any], DatasetInfo]:
    """dataset.json -> (the raw JSON, the equivalent DatasetInfo)."""
    path = src / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; not an nnU-Net raw dataset folder")
    data = read_json(path, "dataset.json")
    if not isinstance(data, dict):
        raise DataError(f"{path}: must be a JSON object")
    for key in ("channel_names", "labels", "file_ending"):
        if key not in data:
            raise DataError(f"{path}: missing '{key}'")
    for key, kind in (("channel_names", dict), ("labels", dict), ("file_ending", str)):
        if not isinstance(data[key], kind):
            raise DataError(f"{path}: '{key}' must be {'an object' if kind is dict else 'a string'}")
    if len(data["channel_names"]) != 1:
        raise DataError(f"{path}: {len(data['channel_names'])} input channels; only single-channel data is supported")
    labels: dict[str, str] = {}
    for label_name, value in data["labels"].items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{path}: label '{label_name}' is region-based ({value}); only integer labels supported")
        if str(value) in labels:
            raise DataError(f"{path}: labels '{labels[str(value)]}' and '{label_name}' share the value {value} "
                            "(which one does a mask mean?)")
        labels[str(value)] = str(label_name)
    folder_match = FOLDER_NAME.match(src.name)
    name = str(data.get("name") or (folder_match["name"] if folder_match else src.name))
    info_data = {
        "name": name,
        "labels": labels,
        "description": str(data.get("description", "")),
        "source": str(data.get("reference", "")),
        "license": str(data.get("licence", data.get("license", ""))),
    }
    return data, DatasetInfo.from_dict(info_data, origin=str(path))


def import_nnunet(src: str | Path, out: str | Path, *, overwrite: bool = False) -> pairing.ImportSummary:
    """Import the training cases (imagesTr + labelsTr) of an nnU-Net v2 raw dataset."""
    src = pairing.require_source_folder(src)
    data, info = read_nnunet_json(src)
    ending = str(data["file_ending"])
    images_dir, labels_dir = src / "imagesTr", src / "labelsTr"
    suffix = f"_0000{ending}"
    images = pairing.require_found(
        sorted(p for p in images_dir.glob(f"*{suffix}")) if images_dir.is_dir() else [],
        images_dir,
        f"*{suffix} images",
    )
    expected = data.get("numTraining")
    if expected is not None and int(expected) != len(images):
        raise DataError(f"{src / 'dataset.json'}: numTraining is {expected} but imagesTr has {len(images)} cases")
    summary = pairing.ImportSummary(Path(out))
    with DatasetWriter(out, info, overwrite=overwrite) as writer:
        for image_path in pairing.progress(images, "nnunet"):
            case = image_path.name[: -len(suffix)]
            label_path = labels_dir / f"{case}{ending}"
            if not label_path.is_file():
                raise DataError(f"{image_path}: missing pair, label {label_path} not found")
            image = _read(image_path, ending, is_label=False)
            mask = _read(label_path, ending, is_label=True)
            pairing.check_same_size(image, mask, image_path, label_path)
            record_id = pairing.safe_id(case)
            writer.add(record_id, image, mask, subject=record_id, source=str(label_path))
            summary.note(record_id, mask)
    return summary


def _read(path: Path, ending: str, is_label: bool) -> np.ndarray:
    if ending.lower() == ".png":
        return read_label_map(path) if is_label else read_image(path)
    from sonosynth.data.importers.camus import read_medical_image, to_uint8_or_16

    array, _ = read_medical_image(path)
    if not is_label:
        return to_uint8_or_16(array)
    if array.min(initial=0) < 0 or array.max(initial=0) > 255:
        raise DataError(f"{path}: label values outside 0..255")
    return array.astype(np.uint8)
