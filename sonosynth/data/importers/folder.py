"""Any folder of images and masks, paired by a name pattern.

```
sonosynth data import folder SRC OUT --images 'img/*.png' --masks 'lbl/{stem}_mask.png' --label-map 255:1
```
`--images` is a glob relative to SRC; `--masks` is a template relative to SRC where `{stem}`
is the image's name without extension, `{name}` its full name and `{dir}` its folder relative to
SRC. Mask values are translated by the label map (unlisted values are kept) and must then be
among the declared labels.

The subject comes from the image file name: `--subject-pattern` is a regex whose group 1 is the
subject; or `--name-pattern` is a regex with named groups, where `(?P<subject>...)` gives the
subject and every other named group a categorical attribute, declared in dataset.json with the
sorted values seen (CAMUS-224: `(?P<subject>patient\\d+)_(?P<view>2CH|4CH)_(?P<phase>ED|ES)`).
Without either, or without a `subject` group, each image is its own subject.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sonosynth.data.format import CORE_COLUMNS, HASH_COLUMNS, DatasetInfo, DatasetWriter
from sonosynth.data.imageio import read_image, read_label_map
from sonosynth.data.importers import pairing
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
                value, label = int(source), int(target)
            except ValueError:
                raise DataError(f"--label-map: '{pair}' is not SOURCE:TARGET with integers") from None
            if mapping.get(value, label) != label:
                raise DataError(f"--label-map: {value} is mapped to both {mapping[value]} and {label}")
            mapping[value] = label
    for source, target in mapping.items():
        if not (0 <= source <= 65535 and 0 <= target <= 255):
            raise DataError(f"--label-map: {source}:{target} out of range (source 0..65535, target 0..255)")
    return mapping


def folder_info(
    name: str,
    label_names: Sequence[str] | None,
    label_map: Mapping[int, int],
    attributes: Mapping[str, list[str]] | None = None,
) -> DatasetInfo:
    """Labels: background plus the given names; without names, one per label the map produces."""
    if label_names:
        names = list(label_names)
    else:
        count = max([1, *label_map.values()])
        names = ["foreground"] if count == 1 else [f"label_{k}" for k in range(1, count + 1)]
    labels = {"0": "background", **{str(k): n for k, n in enumerate(names, start=1)}}
    return DatasetInfo(
        name=name,
        labels=labels,
        attributes=dict(attributes or {}),
        description="imported with `sonosynth data import folder`",
    )


def import_folder(
    src: str | Path,
    out: str | Path,
    *,
    images: str,
    masks: str,
    label_map: Mapping[int, int] | None = None,
    label_names: Sequence[str] | None = None,
    subject_pattern: str | None = None,
    name_pattern: str | None = None,
    spacing_mm: float | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> pairing.ImportSummary:
    """Import pairs found by an image glob and a mask template (see the module docstring)."""
    src = pairing.require_source_folder(src)
    if spacing_mm is not None and not (math.isfinite(spacing_mm) and 0 < spacing_mm <= 5):
        raise DataError(f"--spacing-mm {spacing_mm}: a pixel size in mm, more than 0 and at most 5")
    label_map = dict(label_map or {})
    if subject_pattern and name_pattern:
        raise DataError("--subject-pattern and --name-pattern: give one of them (name the subject group in the other)")
    subject_regex = _compile_subject_pattern(subject_pattern)
    name_regex = _compile_name_pattern(name_pattern)
    try:
        matches = sorted(p for p in src.glob(images) if p.is_file())
    except (NotImplementedError, ValueError) as exc:
        raise DataError(f"--images '{images}': not a glob relative to SRC ({exc})") from None
    image_paths = pairing.require_found(matches, src, f"images matching '{images}'")
    fields = [_name_fields(name_regex, path) for path in image_paths] if name_regex else [{} for _ in image_paths]
    attribute_names = [group for group in (name_regex.groupindex if name_regex else {}) if group != "subject"]
    attributes = {a: sorted({f[a] for f in fields}) for a in attribute_names}
    info = folder_info(name or Path(out).name, label_names, label_map, attributes)
    summary = pairing.ImportSummary(Path(out))
    with DatasetWriter(out, info, overwrite=overwrite) as writer:
        pairs = zip(image_paths, fields, strict=True)
        for image_path, found in pairing.progress(pairs, "folder", total=len(image_paths)):
            mask_path = src / _mask_name(masks, image_path, src)
            if not mask_path.is_file():
                raise DataError(f"{image_path}: missing pair, mask {mask_path} not found")
            image = read_image(image_path)
            mask = read_label_map(mask_path) if not label_map else _read_mapped(mask_path, label_map)
            pairing.check_same_size(image, mask, image_path, mask_path)
            record_id = pairing.safe_id(image_path.stem)
            writer.add(
                record_id,
                image,
                mask,
                subject=found.get("subject") or _subject(subject_regex, image_path, record_id),
                spacing_mm=spacing_mm,
                source=str(mask_path),
                extra={"source_image": str(image_path.relative_to(src))},
                **{a: found[a] for a in attribute_names},
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


def _compile_pattern(option: str, pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise DataError(f"{option} '{pattern}': invalid regular expression ({exc})") from None


def _match_name(regex: re.Pattern[str], option: str, image_path: Path) -> re.Match[str]:
    match = regex.search(image_path.name)
    if not match:
        raise DataError(f"{image_path}: name does not match {option} '{regex.pattern}'")
    return match


def _compile_subject_pattern(pattern: str | None) -> re.Pattern[str] | None:
    regex = _compile_pattern("--subject-pattern", pattern)
    if regex is not None and regex.groups < 1:
        raise DataError(f"--subject-pattern '{pattern}': needs one (group) capturing the subject")
    return regex


def _subject(regex: re.Pattern[str] | None, image_path: Path, record_id: str) -> str:
    """The subject from the image file name via --subject-pattern; each image its own otherwise."""
    if regex is None:
        return record_id
    return _match_name(regex, "--subject-pattern", image_path).group(1)


# Manifest columns a --name-pattern group would collide with (`source_image` is the importer's own).
_RESERVED_GROUPS = {*CORE_COLUMNS, *HASH_COLUMNS, "source_image"} - {"subject"}


def _compile_name_pattern(pattern: str | None) -> re.Pattern[str] | None:
    regex = _compile_pattern("--name-pattern", pattern)
    if regex is None:
        return None
    if not regex.groupindex:
        raise DataError(f"--name-pattern '{pattern}': needs named groups, e.g. (?P<subject>p\\d+)_(?P<view>\\w+)")
    reserved = sorted(_RESERVED_GROUPS & set(regex.groupindex))
    if reserved:
        raise DataError(f"--name-pattern '{pattern}': group names {reserved} are manifest columns; rename them")
    return regex


def _name_fields(regex: re.Pattern[str], image_path: Path) -> dict[str, str]:
    """The named groups of --name-pattern searched on the image file name; each must give a value."""
    fields = _match_name(regex, "--name-pattern", image_path).groupdict()
    empty = [group for group, value in fields.items() if not value]
    if empty:
        raise DataError(f"{image_path}: --name-pattern groups {empty} match nothing in this name")
    return fields
