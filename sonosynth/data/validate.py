"""`sonosynth data check`: validate a dataset folder and summarise what is in it.

Validation reads every file once: it exists, its sha256 matches the manifest, image and mask have
the same size, mask values are declared labels, attributes take declared values. The same pass
gathers the summary (counts per split, image sizes, label histogram, attributes, empty masks).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sonosynth.data.format import SPLITS, Dataset, Record, sha256_of
from sonosynth.data.imageio import read_image, read_label_map
from sonosynth.data.importers.pairing import progress
from sonosynth.errors import DataError


@dataclass
class DatasetReport:
    """Problems found (one line each, naming the file) and the summary of a dataset."""

    root: Path
    name: str
    labels: dict[str, str]
    records: int = 0
    problems: list[str] = field(default_factory=list)
    images_per_split: Counter[str] = field(default_factory=Counter)
    subjects_per_split: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    image_sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    image_dtypes: Counter[str] = field(default_factory=Counter)
    label_pixels: Counter[int] = field(default_factory=Counter)
    label_images: Counter[int] = field(default_factory=Counter)
    attributes: dict[str, Counter[str]] = field(default_factory=dict)
    empty_masks: list[str] = field(default_factory=list)
    free_form_attributes: set[str] = field(default_factory=set)
    spacings: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(root: str | Path, verify_hashes: bool = True) -> DatasetReport:
    """Validate every record of a dataset folder; layout errors (no manifest, duplicate ids) raise."""
    return check_records(Dataset.open(root), verify_hashes)


def check_records(dataset: Dataset, verify_hashes: bool = True, show_progress: bool = True) -> DatasetReport:
    """Validate the records of a dataset (or of a subset view of one): the one validation pass."""
    info = dataset.info
    report = DatasetReport(dataset.root, info.name, dict(info.labels), records=len(dataset))
    report.attributes = {name: Counter() for name in info.attributes}
    report.free_form_attributes = {name for name, allowed in info.attributes.items() if allowed is None}
    records = progress(dataset.records, "check") if show_progress else dataset.records
    for record in records:
        _check_record(dataset, record, report, verify_hashes)
    return report


def require_valid(dataset: Dataset, what: str = "pairs") -> None:
    """Validate on entry: the pairs a command is about to use, before it does any work or writes anything.

    The same checks as `sonosynth data check` (files present, image and mask the same size, mask values
    within the declared labels, attribute values declared); the first problem becomes a one-line
    `DataError` naming the file. Hashes are not recomputed here (`data check` does that)."""
    report = check_records(dataset, verify_hashes=False, show_progress=False)
    if report.problems:
        more = len(report.problems) - 1
        extra = f" (and {more} more problem{'s' if more > 1 else ''}: run `sonosynth data check {dataset.root}`)" \
            if more else ""
        raise DataError(f"{report.problems[0]}; cannot use these {what}{extra}")


def _check_record(dataset: Dataset, record: Record, report: DatasetReport, verify_hashes: bool) -> None:
    info = dataset.info
    report.images_per_split[record.split] += 1
    report.subjects_per_split[record.split].add(record.subject or record.id)
    if record.split not in SPLITS:
        report.problems.append(f"{dataset.root / 'manifest.csv'}: {record.id}: unknown split '{record.split}'")
    if record.spacing_mm is not None:
        report.spacings.append(record.spacing_mm)
    for name, value in record.attributes.items():
        report.attributes[name][value] += 1
        allowed = info.attributes.get(name)
        if allowed is not None and value not in allowed:
            report.problems.append(f"{dataset.root / 'manifest.csv'}: {record.id}: {name}='{value}' not in {allowed}")
    arrays = []
    for kind, expected_hash, reader in (
        ("image", record.image_sha256, read_image),
        ("mask", record.mask_sha256, read_label_map),
    ):
        path = dataset.path_of(record, kind)
        if not path.is_file():
            report.problems.append(f"{path}: {kind} file missing")
            return
        if verify_hashes and expected_hash and sha256_of(path) != expected_hash:
            report.problems.append(f"{path}: sha256 does not match the manifest (file changed since it was written)")
        try:
            arrays.append(reader(path))
        except DataError as exc:
            report.problems.append(str(exc))
            return
    image, mask = arrays
    report.image_sizes[(image.shape[1], image.shape[0])] += 1
    report.image_dtypes[str(image.dtype)] += 1
    mask_path = dataset.path_of(record, "mask")
    if image.shape != mask.shape:
        report.problems.append(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from "
            f"image size {image.shape[1]}x{image.shape[0]}"
        )
    counts = np.bincount(mask.ravel(), minlength=info.num_labels)
    bad = [int(v) for v in np.nonzero(counts[info.num_labels :])[0] + info.num_labels]
    if bad:
        last = info.num_labels - 1
        report.problems.append(f"{mask_path}: mask values {bad[:5]} outside the declared labels 0..{last}")
    for value in np.nonzero(counts)[0]:
        report.label_pixels[int(value)] += int(counts[value])
        report.label_images[int(value)] += 1
    if not counts[1:].any():
        report.empty_masks.append(record.id)


def print_report(report: DatasetReport, console=None, max_problems: int = 20) -> None:
    """Summary tables (rich) followed by the problems, if any."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]{report.name}[/bold]  {report.root}  ({report.records} pairs)")

    splits = Table(title="splits")
    for column in ("split", "images", "subjects"):
        splits.add_column(column, justify="right" if column != "split" else "left")
    for split in sorted(report.images_per_split, key=lambda s: (SPLITS.index(s) if s in SPLITS else 99, s)):
        subjects = len(report.subjects_per_split[split])
        splits.add_row(split or "(none)", str(report.images_per_split[split]), str(subjects))
    console.print(splits)

    sizes = Table(title="image sizes")
    sizes.add_column("width x height")
    sizes.add_column("images", justify="right")
    for (width, height), count in report.image_sizes.most_common(10):
        sizes.add_row(f"{width} x {height}", str(count))
    if len(report.image_sizes) > 10:
        sizes.add_row(f"... {len(report.image_sizes) - 10} more sizes", "")
    sizes.caption = "dtypes: " + ", ".join(f"{k} ({v})" for k, v in report.image_dtypes.items())
    if report.spacings:
        sizes.caption += f"; spacing_mm {min(report.spacings):.4g}..{max(report.spacings):.4g}"
    console.print(sizes)

    labels = Table(title="labels")
    for column in ("value", "name", "pixels", "% pixels", "images"):
        labels.add_column(column, justify="left" if column == "name" else "right")
    total = sum(report.label_pixels.values()) or 1
    values = sorted({int(k) for k in report.labels} | set(report.label_pixels))
    for value in values:
        pixels = report.label_pixels.get(value, 0)
        labels.add_row(
            str(value),
            report.labels.get(str(value), "[red]undeclared[/red]"),
            str(pixels),
            f"{100.0 * pixels / total:.2f}",
            str(report.label_images.get(value, 0)),
        )
    labels.caption = f"empty masks (background only): {len(report.empty_masks)}"
    console.print(labels)

    if report.attributes:
        attributes = Table(title="attributes")
        attributes.add_column("attribute")
        attributes.add_column("values (images)")
        for name, counter in report.attributes.items():
            attributes.add_row(name, _describe_values(counter, free_form=name in report.free_form_attributes))
        console.print(attributes)

    if report.problems:
        console.print(f"[bold red]{len(report.problems)} problem(s):[/bold red]")
        for line in report.problems[:max_problems]:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        if len(report.problems) > max_problems:
            console.print(f"... and {len(report.problems) - max_problems} more")
    else:
        console.print("[bold green]ok[/bold green]: all files present, hashes, sizes and labels valid")


def _describe_values(counter: Counter[str], free_form: bool) -> str:
    """Categorical: value (count) pairs. Free-form numbers: their range, not hundreds of values."""
    if free_form:
        filled = [v for v in counter.elements() if v != ""]
        try:
            numbers = [float(v) for v in filled]
        except ValueError:
            numbers = []
        missing = sum(counter.values()) - len(filled)
        if numbers:
            text = f"{len(numbers)} numbers, {min(numbers):.4g}..{max(numbers):.4g} (median {np.median(numbers):.4g})"
            return text + (f", {missing} empty" if missing else "")
    shown = ", ".join(f"{value or '(empty)'} ({count})" for value, count in counter.most_common(8))
    return shown + (f", ... {len(counter) - 8} more" if len(counter) > 8 else "")


def require_separate(held_out: Dataset, other: Dataset, what: str = "extra pairs") -> None:
    """`other` (synthetic pairs, usually) may hold none of the `held_out` (validation and test) pairs, by id or
    by image content: training on them would score the segmenter on what it learnt from, without a word."""
    if not len(held_out):
        return
    ids = {r.id for r in held_out.records}
    hashes = {r.image_sha256 or sha256_of(held_out.path_of(r)) for r in held_out.records}
    for record in other.records:
        if record.id in ids:
            raise DataError(f"{other.root / 'manifest.csv'}: {what} hold '{record.id}', an id of {held_out.root}'s "
                            "validation or test pairs (they may not be trained on)")
        path = other.path_of(record)
        digest = record.image_sha256 or (sha256_of(path) if path.is_file() else "")
        if digest in hashes:
            raise DataError(f"{path}: the same image as one of {held_out.root}'s validation or test pairs (they may "
                            f"not be trained on)")
