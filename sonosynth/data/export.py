"""Export a dataset folder to the nnU-Net v2 raw format, so (synthetic) data trains nnU-Net directly.

```
OUT/DatasetNNN_NAME/
  dataset.json          channel_names {"0": "US"}, labels {"background": 0, ...}, numTraining, file_ending ".png"
  imagesTr/<id>_0000.png
  labelsTr/<id>.png
```
PNG files are copied byte for byte, so pixels are identical to the dataset's.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from sonosynth.data.format import Dataset, Record
from sonosynth.data.imageio import read_image, read_label_map, write_png
from sonosynth.data.importers.pairing import progress
from sonosynth.data.validate import require_valid
from sonosynth.errors import DataError
from sonosynth.files import is_temporary, output_folder, prepare_output

_NAME_CHARS = re.compile(r"[^A-Za-z0-9]+")


def nnunet_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise DataError(f"--id {dataset_id}: nnU-Net dataset ids are 1..999")
    cleaned = _NAME_CHARS.sub("_", name).strip("_") or "sonosynth"
    return f"Dataset{dataset_id:03d}_{cleaned}"


def nnunet_dataset_json(dataset: Dataset, num_training: int) -> dict:
    """dataset.json for nnU-Net v2; label 0 is always called 'background' there."""
    labels: dict[str, int] = {"background": 0}
    for value in sorted(int(k) for k in dataset.info.labels if int(k) != 0):
        name = dataset.info.labels[str(value)]
        if name in labels:
            where = dataset.root / "dataset.json"
            raise DataError(f"{where}: label name '{name}' is used twice; nnU-Net needs unique names")
        labels[name] = value
    return {
        "name": dataset.info.name,
        "description": dataset.info.description,
        "reference": dataset.info.source,
        "licence": dataset.info.license,
        "channel_names": {"0": "US"},
        "labels": labels,
        "numTraining": num_training,
        "file_ending": ".png",
        "overwrite_image_reader_writer": "NaturalImage2DIO",
    }


def export_nnunet(
    dataset_root: str | Path,
    out_root: str | Path,
    dataset_id: int,
    *,
    name: str | None = None,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write OUT_ROOT/DatasetNNN_NAME (all records, or those of the given splits) and return its path."""
    dataset = Dataset.open(dataset_root)
    if splits is not None:
        dataset = dataset.subset(split=list(splits))
    if len(dataset) == 0:
        raise DataError(f"{dataset_root}: no records to export" + (f" in splits {list(splits)}" if splits else ""))
    require_valid(dataset, "pairs to export")  # before any output exists
    out_root = Path(out_root)
    folder = nnunet_folder_name(dataset_id, name or dataset.info.name)
    target = prepare_output(out_root / folder, overwrite, inputs=[dataset_root])
    clash = [p.name for p in out_root.glob(f"Dataset{dataset_id:03d}_*")
             if p.name != folder and p.is_dir() and not is_temporary(p)]
    if clash:
        raise DataError(f"{out_root / clash[0]}: nnU-Net dataset id {dataset_id} is already taken")
    dataset_json = nnunet_dataset_json(dataset, len(dataset))
    with output_folder(target, overwrite) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for record in progress(dataset.records, "export nnunet"):
            _export_pair(dataset, record, tmp)
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
    return target


def _export_pair(dataset: Dataset, record: Record, tmp: Path) -> None:
    image_src, mask_src = dataset.path_of(record, "image"), dataset.path_of(record, "mask")
    for path in (image_src, mask_src):
        if not path.is_file():
            raise DataError(f"{path}: file listed in the manifest is missing")
    image_dst, mask_dst = tmp / "imagesTr" / f"{record.id}_0000.png", tmp / "labelsTr" / f"{record.id}.png"
    if _plain_png(image_src, ("L", "I;16", "I;16B")):
        shutil.copyfile(image_src, image_dst)
    else:
        write_png(image_dst, read_image(image_src))
    if _plain_png(mask_src, ("L",)):
        shutil.copyfile(mask_src, mask_dst)
    else:
        write_png(mask_dst, read_label_map(mask_src))


def _plain_png(path: Path, modes: tuple[str, ...]) -> bool:
    """A grayscale PNG nnU-Net reads as is (checked from the header only); others are re-encoded."""
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.mode in modes
    except Exception:  # unreadable: let the re-encoding path raise the DataError naming the file
        return False
