"""The one on-disk dataset layout every stage reads and writes (see docs/dataset-format.md).

```
DATASET/
  dataset.json    name, modality, labels, attributes, source, license
  manifest.csv    id, image, mask, subject, split, spacing_mm, <attributes...>, <extra...>,
                  image_sha256, mask_sha256
  images/<id>.png grayscale, 8- or 16-bit
  masks/<id>.png  uint8 label map with values 0..K-1
```
Writers build the folder under a temporary name and rename it at the end, so a failure or
Ctrl-C never leaves a half-written dataset behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sonosynth.data.imageio import read_image, read_label_map, write_png
from sonosynth.errors import DataError
from sonosynth.files import (
    Inputs,
    atomic_path,
    commit_folder,
    prepare_output,
    read_json,
    read_text,
    temporary_folder,
    writing,
)

DATASET_JSON = "dataset.json"
MANIFEST_CSV = "manifest.csv"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
SPLITS = ("train", "val", "test", "")
CORE_COLUMNS = ("id", "image", "mask", "subject", "split", "spacing_mm")
HASH_COLUMNS = ("image_sha256", "mask_sha256")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class DatasetInfo:
    """Contents of dataset.json.

    `labels` maps label value (as a string, JSON keys are strings) to its name; 0 is background.
    `attributes` maps a categorical attribute (view, pathology, ...) to its allowed values; an
    attribute mapped to None is free-form (numbers such as a reference head circumference).
    """

    name: str
    labels: dict[str, str]
    modality: str = "ultrasound"
    organ: str = ""  # what is imaged ("fetal head", "breast", "heart"): prompts of Stable Diffusion runs
    attributes: dict[str, list[str] | None] = field(default_factory=dict)
    source: str = ""
    license: str = ""
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return max(int(k) for k in self.labels) + 1

    @property
    def categorical_attributes(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.attributes.items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = DATASET_JSON) -> DatasetInfo:
        """dataset.json's object, its documented types checked (docs/dataset-format.md): a wrong shape is one
        line naming the file, not a traceback or a silently different dataset."""
        if not isinstance(data, Mapping) or "name" not in data or "labels" not in data:
            raise DataError(f"{origin}: must be a JSON object with at least 'name' and 'labels'")
        for key in ("name", "modality", "organ", "source", "license", "description"):
            if key in data and not isinstance(data[key], str):
                raise DataError(f"{origin}: '{key}' must be a string, got {data[key]!r}")
        for key in ("labels", "attributes", "provenance"):
            if data.get(key) is not None and not isinstance(data[key], Mapping):
                raise DataError(f"{origin}: '{key}' must be an object, got {type(data[key]).__name__}")
        if not isinstance(data["labels"], Mapping):
            raise DataError(f"{origin}: 'labels' must be an object (value: name)")
        for key, value in data["labels"].items():
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{origin}: label {key} must have a name (a non-empty string), got {value!r}")
        labels = {str(k): str(v) for k, v in dict(data["labels"]).items()}
        if any(not k.strip().isdigit() for k in labels):
            raise DataError(f"{origin}: label keys must be non-negative integers, got {list(labels)}")
        values = sorted(int(k) for k in labels)
        if len(set(values)) != len(values):
            raise DataError(f"{origin}: a label value is given twice ({list(labels)})")
        if not values or values[0] != 0 or values != list(range(len(values))) or values[-1] > 255:
            raise DataError(f"{origin}: labels must be 0..K-1 (K <= 256), got {values}")
        attributes: dict[str, list[str] | None] = {}
        for name, allowed in dict(data.get("attributes") or {}).items():
            if allowed is not None and (not isinstance(allowed, list)
                                        or not all(isinstance(x, str | int | float) for x in allowed)):
                raise DataError(f"{origin}: attribute '{name}' must list its values (or be null for free-form "
                                f"values), got {allowed!r}")
            attributes[str(name)] = None if allowed is None else [str(x) for x in allowed]
        known = {f.name for f in cls.__dataclass_fields__.values()}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["labels"] = labels
        kwargs["attributes"] = attributes
        kwargs["provenance"] = dict(data.get("provenance") or {})
        info = cls(**kwargs)
        info.validate(origin)
        return info

    def validate(self, origin: str = DATASET_JSON) -> None:
        """What makes labels or attributes ambiguous: two labels of one name, an attribute named like a
        manifest column (`split` would be two columns), an attribute value listed twice."""
        names = [name.strip().lower() for name in self.labels.values()]
        repeated = next((n for n in names if names.count(n) > 1), None)
        if repeated is not None:
            raise DataError(f"{origin}: two labels are named '{repeated}' (which one is meant?)")
        reserved = set(CORE_COLUMNS) | set(HASH_COLUMNS)
        for name, allowed in self.attributes.items():
            if name.lower() in reserved or not name.strip():
                raise DataError(f"{origin}: attribute '{name}' is a manifest column's name (reserved: "
                                f"{', '.join(sorted(reserved))})")
            if allowed is not None and len(set(allowed)) != len(allowed):
                raise DataError(f"{origin}: attribute '{name}' lists a value twice ({allowed})")


@dataclass
class Record:
    """One manifest row: where a pair lives and what is known about it."""

    id: str
    image: str
    mask: str
    subject: str = ""
    split: str = ""
    spacing_mm: float | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    image_sha256: str = ""
    mask_sha256: str = ""


@dataclass
class Sample:
    """A loaded pair: arrays plus the record that describes them."""

    record: Record
    image: np.ndarray
    mask: np.ndarray

    @property
    def id(self) -> str:
        return self.record.id


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Dataset(Sequence[Sample]):
    """A dataset folder opened for reading. Indexing loads the pair from disk."""

    def __init__(self, root: Path, info: DatasetInfo, records: list[Record]):
        self.root = root
        self.info = info
        self.records = records

    @classmethod
    def open(cls, root: str | Path) -> Dataset:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: dataset folder not found")
        info_path, manifest_path = root / DATASET_JSON, root / MANIFEST_CSV
        for required in (info_path, manifest_path):
            if not required.is_file():
                raise DataError(f"{required}: missing; not a sonosynth dataset folder")
        info = DatasetInfo.from_dict(read_json(info_path, DATASET_JSON), origin=str(info_path))
        records = read_manifest(manifest_path, info)
        if not records:
            raise DataError(f"{manifest_path}: holds no pairs (an empty dataset)")
        return cls(root, info, records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        record = self.records[index]
        return Sample(record, read_image(self.root / record.image), read_label_map(self.root / record.mask))

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def subset(self, split: str | Sequence[str] | None = None, ids: Sequence[str] | None = None) -> Dataset:
        """A view on some records (by split name(s) and/or ids); files are shared."""
        records = self.records
        if split is not None:
            wanted = {split} if isinstance(split, str) else set(split)
            records = [r for r in records if r.split in wanted]
        if ids is not None:
            keep = set(ids)
            records = [r for r in records if r.id in keep]
        return Dataset(self.root, self.info, list(records))

    def select(self, split: str = "auto", what: str = "pairs", trains: bool = False) -> Dataset:
        """The pairs a stage works on: `auto` is the `train` split when the dataset is split (even if that
        leaves nothing: val and test pairs are never trained on by default), else every pair; `all` is
        every pair; any other name is that split. Nothing selected is a `DataError`.

        `trains`: a model is trained on the pairs, so `auto` on a dataset without splits is refused: it would
        train on every pair, and a split made later would put pairs the model saw into val and test."""
        if split == "auto":
            if trains and not any(r.split for r in self.records):
                raise DataError(f"{self.root}: has no train/val/test split, so a model trained on it now would see "
                                f"the pairs a later split tests on: run `sonosynth data split {self.root}` first, or "
                                "pass --split all to train on every pair")
            split = "train" if any(r.split for r in self.records) else "all"
        chosen = self if split == "all" else self.subset(split=split)
        if not len(chosen):
            raise DataError(f"{self.root}: no {what} in split '{split}' (choose another split, or 'all')")
        return chosen

    @property
    def subjects(self) -> list[str]:
        return sorted({r.subject or r.id for r in self.records})

    def path_of(self, record: Record, kind: str = "image") -> Path:
        return self.root / (record.image if kind == "image" else record.mask)


def _require_inside(manifest: Path, line: int, kind: str, relative: str) -> None:
    """A dataset is one self-contained folder: a manifest path may not be absolute or climb out of it.

    Checked on the path as written (a symlinked images/ folder stays allowed)."""
    normal = os.path.normpath(relative) if relative else ""
    if not normal or os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
        raise DataError(f"{manifest}: line {line}: {kind} path '{relative}' is not inside the dataset folder")


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether `a` becomes `b` by one insertion, deletion, substitution or swap of neighbours (or is `b`)."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def _check_id(path: Path, line: int, rid: str, seen: dict[str, str]) -> None:
    """An id names files (`images/<id>.png`, predictions, exports): one safe path component, unique even on a
    file system that ignores case."""
    if not _ID_PATTERN.match(rid) or len(rid) > 200:
        raise DataError(f"{path}: line {line}: invalid id {rid!r} (letters, digits, '_', '-', '.'; starting with "
                        "a letter or digit: an id names files, so no separators, '..' or control characters)")
    other = seen.get(rid.lower())
    if other is not None:
        what = "duplicate id" if other == rid else f"id '{rid}' differs only in case from '{other}'"
        raise DataError(f"{path}: {what} (line {line})" if other == rid else
                        f"{path}: line {line}: {what} (their files would overwrite each other)")
    seen[rid.lower()] = rid


def _length_mm(path: Path, line: int, column: str, text: str) -> float | None:
    """A length in mm (spacing_mm, hc_mm, ...): empty, or a finite positive number."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}: line {line}: {column} '{text}' is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise DataError(f"{path}: line {line}: {column} {text} is not a length (finite and positive)")
    return value


def read_manifest(path: Path, info: DatasetInfo) -> list[Record]:
    """The manifest's rows as records, validated on read (a dataset written by hand or another tool, or
    edited in a spreadsheet, gets the same checks as one sonosynth wrote)."""
    with io.StringIO(read_text(path, MANIFEST_CSV), newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        repeated = next((c for c in columns if columns.count(c) > 1), None)
        if repeated is not None:
            raise DataError(f"{path}: column '{repeated}' appears twice in the header")
        missing = [c for c in ("id", "image", "mask") if c not in columns]
        if missing:
            raise DataError(f"{path}: missing columns {missing}")
        known = [*CORE_COLUMNS, *HASH_COLUMNS, *info.attributes]
        for column in (c for c in columns if c not in known):
            lower = column.lower()
            close = next((k for k in known if lower == k or len(k) >= 4 and _one_edit_apart(lower, k)), None)
            if close is not None:
                raise DataError(f"{path}: column '{column}' looks like '{close}' misspelt (an extra column may not "
                                "be one edit away from a manifest column or a declared attribute)")
        records: list[Record] = []
        seen: dict[str, str] = {}
        for row in reader:
            line = reader.line_num
            if None in row or None in row.values():
                fields = len(columns) + len(row.get(None) or []) - sum(v is None for v in row.values())
                raise DataError(f"{path}: line {line} has {fields} fields, the header has {len(columns)}")
            rid = row["id"]
            _check_id(path, line, rid, seen)
            spacing_mm = _length_mm(path, line, "spacing_mm", row.get("spacing_mm") or "")
            for column in (c for c in columns if c.endswith("_mm") and c != "spacing_mm"):
                _length_mm(path, line, column, row[column])
            for kind in ("image", "mask"):
                _require_inside(path, line, kind, row[kind] or "")
            attributes = {k: row.get(k, "") or "" for k in info.attributes}
            reserved = set(CORE_COLUMNS) | set(HASH_COLUMNS) | set(info.attributes)
            extra = {k: v or "" for k, v in row.items() if k not in reserved and k is not None}
            records.append(
                Record(
                    id=rid,
                    image=row["image"],
                    mask=row["mask"],
                    subject=row.get("subject", "") or "",
                    split=row.get("split", "") or "",
                    spacing_mm=spacing_mm,
                    attributes=attributes,
                    extra=extra,
                    image_sha256=row.get("image_sha256", "") or "",
                    mask_sha256=row.get("mask_sha256", "") or "",
                )
            )
    return records


def write_manifest(path: Path, info: DatasetInfo, records: Sequence[Record]) -> None:
    """Write manifest.csv atomically (temporary file, then rename)."""
    extra_columns: list[str] = []
    for r in records:
        for k in r.extra:
            if k not in extra_columns:
                extra_columns.append(k)
    columns = [*CORE_COLUMNS, *info.attributes, *extra_columns, *HASH_COLUMNS]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in records:
            row = {
                "id": r.id,
                "image": r.image,
                "mask": r.mask,
                "subject": r.subject,
                "split": r.split,
                "spacing_mm": "" if r.spacing_mm is None else f"{r.spacing_mm:.9g}",
                "image_sha256": r.image_sha256,
                "mask_sha256": r.mask_sha256,
                **{k: r.attributes.get(k, "") for k in info.attributes},
                **{k: r.extra.get(k, "") for k in extra_columns},
            }
            writer.writerow(row)


class DatasetWriter:
    """Build a dataset folder atomically.

    ```
    with DatasetWriter(out, info) as writer:
        writer.add("case_001", image, mask, subject="001", spacing_mm=0.15, pathology="benign")
    ```
    Nothing appears at `out` unless the block finishes without error.
    """

    def __init__(self, out: str | Path, info: DatasetInfo, overwrite: bool = False, validate_labels: bool = True,
                 inputs: Inputs = ()):
        info.validate(str(Path(out) / DATASET_JSON))
        self.out = prepare_output(out, overwrite, inputs)
        self.overwrite = overwrite
        self.info = info
        self.validate_labels = validate_labels
        self.records: list[Record] = []
        self._ids: set[str] = set()
        self._tmp: Path | None = None

    def __enter__(self) -> DatasetWriter:
        self._tmp = temporary_folder(self.out)
        (self._tmp / IMAGES_DIR).mkdir()
        (self._tmp / MASKS_DIR).mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._tmp is not None
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        try:
            self.finish()
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def add(
        self,
        id: str,
        image: np.ndarray,
        mask: np.ndarray,
        *,
        subject: str = "",
        split: str = "",
        spacing_mm: float | None = None,
        source: str = "",
        extra: Mapping[str, Any] | None = None,
        **attributes: Any,
    ) -> Record:
        """Add one pair. `source` names the original file(s) for error messages."""
        assert self._tmp is not None, "use DatasetWriter as a context manager"
        where = source or id
        if not _ID_PATTERN.match(id):
            raise DataError(f"{where}: invalid id '{id}' (letters, digits, '_', '-', '.')")
        if id in self._ids:
            raise DataError(f"{where}: duplicate id '{id}'")
        image, mask = np.asarray(image), np.asarray(mask)
        if image.ndim != 2 or mask.ndim != 2:
            raise DataError(f"{where}: image and mask must be 2-D, got {image.shape} and {mask.shape}")
        if image.shape != mask.shape:
            raise DataError(f"{where}: image size {image.shape[::-1]} differs from mask size {mask.shape[::-1]}")
        if split not in SPLITS:
            raise DataError(f"{where}: split must be one of train/val/test, got '{split}'")
        if spacing_mm is not None and not (math.isfinite(float(spacing_mm)) and float(spacing_mm) > 0):
            raise DataError(f"{where}: pixel spacing {spacing_mm} mm is not a length (finite and positive)")
        if self.validate_labels:
            check_label_values(mask, self.info, where)
        unknown = [k for k in attributes if k not in self.info.attributes]
        if unknown:
            raise DataError(f"{where}: attributes {unknown} are not declared in dataset.json")
        for k, v in attributes.items():
            allowed = self.info.attributes[k]
            if allowed is not None and str(v) not in allowed:
                raise DataError(f"{where}: attribute {k}='{v}' not among declared values {allowed}")
        if image.dtype not in (np.uint8, np.uint16):
            raise DataError(f"{where}: images must be uint8 or uint16, got {image.dtype}")
        image_rel, mask_rel = f"{IMAGES_DIR}/{id}.png", f"{MASKS_DIR}/{id}.png"
        with writing(self.out, self._tmp):  # a full disk names the file in OUT, not in the temporary folder
            write_png(self._tmp / image_rel, image)
            write_png(self._tmp / mask_rel, mask.astype(np.uint8))
        record = Record(
            id=id,
            image=image_rel,
            mask=mask_rel,
            subject=str(subject),
            split=split,
            spacing_mm=None if spacing_mm is None else float(spacing_mm),
            attributes={k: str(v) for k, v in attributes.items()},
            extra={k: _format_extra(v) for k, v in (extra or {}).items()},
            image_sha256=sha256_of(self._tmp / image_rel),
            mask_sha256=sha256_of(self._tmp / mask_rel),
        )
        self._ids.add(id)
        self.records.append(record)
        return record

    def finish(self) -> Path:
        assert self._tmp is not None
        with writing(self.out, self._tmp):
            (self._tmp / DATASET_JSON).write_text(self.info.to_json())
            write_manifest(self._tmp / MANIFEST_CSV, self.info, self.records)
        commit_folder(self._tmp, self.out, self.overwrite)
        return self.out


def _format_extra(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def check_label_values(mask: np.ndarray, info: DatasetInfo, where: str) -> None:
    values = np.unique(mask)
    bad = [int(v) for v in values if v < 0 or v >= info.num_labels]
    if bad:
        raise DataError(
            f"{where}: mask values {bad} outside the declared labels 0..{info.num_labels - 1} ({info.labels})"
        )


def update_records(root: str | Path, records: Sequence[Record]) -> None:
    """Rewrite a dataset's manifest in place (e.g. after assigning splits)."""
    root = Path(root)
    info = Dataset.open(root).info
    write_manifest(root / MANIFEST_CSV, info, records)


def copy_pairs(writer: DatasetWriter, dataset: Dataset, prefix: str = "") -> None:
    """Add every pair of `dataset` (with subject, split, spacing, attributes, extras) to an open writer."""
    for sample in dataset:
        r = sample.record
        writer.add(f"{prefix}{r.id}", sample.image, sample.mask, subject=r.subject, split=r.split,
                   spacing_mm=r.spacing_mm, extra=r.extra, **r.attributes)
