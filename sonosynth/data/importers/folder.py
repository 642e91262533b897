"""Any folder of images and masks, paired by a name pattern.

```
sonosynth data import folder SRC OUT --images 'img/*.png' --masks 'lbl/{stem}_mask.png' --label-map 255:1
```
`--images` is a glob relative to SRC; `--masks` is a template relative to SRC where `{stem}`
is the image's name without extension, `{name}` its full name and `{dir}` its folder relative to
SRC. Mask values are translated by the label map (unlisted values are kept) and must then be
among the declared labels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
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


def parse_label_map(items: Sequence[str]) -> dict[int, int]:
    """['255:1', '128:2'] or ['255:1,128:2'] -> {255: 1, 128: 2}."""
    mapping: dict[int, int] = {}
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            source, sep, target = pair.partition(":")
            try:
                if not sep:
                    raise ValueError
                mapping[int(source)] = int(target)
            except ValueError:
                raise DataError(f"--label-map: '{pair}' is not SOURCE:TARGET with integers") from None
    for source, target in mapping.items():
        if not (0 <= source <= 65535 and 0 <= target <= 255):
            raise DataError(f"--label-map: {source}:{target} out of range (source 0..65535, target 0..255)")
    return mapping


def folder_info(name: str, label_names: Sequence[str] | None, label_map: Mapping[int, int]) -> DatasetInfo:
    """Labels: background plus the given names; without names, one per label the map produces."""
    if label_names:
        names = list(label_names)
    else:
        count = max([1, *label_map.values()])
        names = ["foreground"] if count == 1 else [f"label_{k}" for k in range(1, count + 1)]
    labels = {"0": "background", **{str(k): n for k, n in enumerate(names, start=1)}}
    return DatasetInfo(name=name, labels=labels, description="imported with `sonosynth data import folder`")


def import_folder(
    src: str | Path,
    out: str | Path,
    *,
    images: str,
    masks: str,
    label_map: Mapping[int, int] | None = None,
    label_names: Sequence[str] | None = None,
    subject_pattern: str | None = None,
    spacing_mm: float | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> ImportSummary:
    """Import pairs found by an image glob and a mask template (see the module docstring)."""
    src = require_source_folder(src)
    label_map = dict(label_map or {})
    info = folder_info(name or Path(out).name, label_names, label_map)
    subject_regex = _compile_subject_pattern(subject_pattern)
    try:
        matches = sorted(p for p in src.glob(images) if p.is_file())
    except (NotImplementedError, ValueError) as exc:
        raise DataError(f"--images '{images}': not a glob relative to SRC ({exc})") from None
    image_paths = require_found(matches, src, f"images matching '{images}'")
    summary = ImportSummary(Path(out))
    with DatasetWriter(out, info, overwrite=overwrite) as writer:
        for image_path in progress(image_paths, "folder"):
            mask_path = src / _mask_name(masks, image_path, src)
            if not mask_path.is_file():
                raise DataError(f"{image_path}: missing pair, mask {mask_path} not found")
            image = read_image(image_path)
            mask = read_label_map(mask_path) if not label_map else _read_mapped(mask_path, label_map)
            check_same_size(image, mask, image_path, mask_path)
            record_id = safe_id(image_path.stem)
            writer.add(
                record_id,
                image,
                mask,
                subject=_subject(subject_regex, image_path, record_id),
                spacing_mm=spacing_mm,
                source=str(mask_path),
                extra={"source_image": str(image_path.relative_to(src))},
            )
            summary.note(record_id, mask)
    return summary


def _mask_name(template: str, image_path: Path, src: Path) -> str:
    relative_dir = image_path.parent.relative_to(src).as_posix()
    try:
        return template.format(stem=image_path.stem, name=image_path.name, dir=relative_dir)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(f"--masks '{template}': bad template ({exc}); use {{stem}}, {{name}} or {{dir}}") from None


def _read_mapped(mask_path: Path, label_map: Mapping[int, int]) -> np.ndarray:
    """Translate mask values through the label map before checking them against the labels."""
    raw = read_image(mask_path).astype(np.int64)
    lookup = np.arange(int(max(raw.max(), max(label_map))) + 1, dtype=np.int64)
    for source, target in label_map.items():
        lookup[source] = target
    mapped = lookup[raw]
    if mapped.max(initial=0) > 255:
        bad = sorted({int(v) for v in np.unique(mapped) if v > 255})
        raise DataError(f"{mask_path}: mask values {bad[:5]} outside the declared labels (not in --label-map)")
    return mapped.astype(np.uint8)


def _compile_subject_pattern(pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--subject-pattern '{pattern}': invalid regular expression ({exc})") from None
    if regex.groups < 1:
        raise DataError(f"--subject-pattern '{pattern}': needs one (group) capturing the subject")
    return regex


def _subject(regex: re.Pattern[str] | None, image_path: Path, record_id: str) -> str:
    """The subject from the image file name via --subject-pattern; each image its own otherwise."""
    if regex is None:
        return record_id
    match = regex.search(image_path.name)
    if not match:
        raise DataError(f"{image_path}: name does not match --subject-pattern '{regex.pattern}'")
    return match.group(1)
