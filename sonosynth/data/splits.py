"""Train/val/test splits written into the manifest, grouped so one subject never straddles splits.

Grouping by subject matters for ultrasound: several images of one patient are near-duplicates,
and letting them fall on both sides of a split inflates every downstream score.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from sonosynth.data.format import Dataset, Record, update_records
from sonosynth.errors import DataError
from sonosynth.settings import Config

GROUPINGS = ("subject", "id")


@dataclass(frozen=True)
class SplitConfig(Config):
    what: ClassVar[str] = "split"

    by: str = "subject"
    val: float = 0.15
    test: float = 0.15
    seed: int = 0


def assign_splits(records: list[Record], config: SplitConfig) -> list[Record]:
    """New records with `split` set; groups (subjects) are shuffled with the seed and cut by fraction."""
    if config.by not in GROUPINGS:
        raise DataError(f"--by {config.by}: choose one of {', '.join(GROUPINGS)}")
    for name, fraction in (("--val", config.val), ("--test", config.test)):
        if not 0.0 <= fraction < 1.0:
            raise DataError(f"{name} {fraction}: must be a fraction in [0, 1)")
    if config.val + config.test >= 1.0:
        raise DataError(f"--val {config.val} + --test {config.test} leave nothing for training")
    groups = sorted({_group_of(r, config.by) for r in records})
    if not groups:
        raise DataError("dataset has no records to split")
    order = np.random.default_rng(config.seed).permutation(len(groups))
    shuffled = [groups[i] for i in order]
    n_test = _group_count(config.test, len(groups))
    n_val = _group_count(config.val, len(groups))
    if n_test + n_val >= len(groups):
        raise DataError(
            f"only {len(groups)} {config.by}s: too few for val {config.val} and test {config.test} with training left"
        )
    split_of = {g: "test" for g in shuffled[:n_test]}
    split_of.update({g: "val" for g in shuffled[n_test : n_test + n_val]})
    return [_with_split(r, split_of.get(_group_of(r, config.by), "train")) for r in records]


def split_dataset(root: str | Path, config: SplitConfig) -> Counter[str]:
    """Assign splits and rewrite the dataset's manifest; returns images per split."""
    dataset = Dataset.open(root)
    records = assign_splits(dataset.records, config)
    update_records(root, records)
    return Counter(r.split for r in records)


def _group_count(fraction: float, groups: int) -> int:
    """Rounded share of groups; a non-zero fraction gets at least one group when there are enough."""
    count = int(round(fraction * groups))
    if fraction > 0 and count == 0 and groups >= 3:
        count = 1
    return count


def _group_of(record: Record, by: str) -> str:
    return (record.subject or record.id) if by == "subject" else record.id


def _with_split(record: Record, split: str) -> Record:
    return replace(record, split=split)
