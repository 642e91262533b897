"""Subject-wise splits: subjects never straddle splits, fractions respected, seeded, written to the manifest."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sonosynth.data.format import Dataset, Record
from sonosynth.data.splits import SplitConfig, assign_splits, split_dataset
from sonosynth.errors import DataError


def _records(subjects: int, images_per_subject: int = 2) -> list[Record]:
    return [
        Record(id=f"s{s:03d}_{i}", image="", mask="", subject=f"s{s:03d}")
        for s in range(subjects)
        for i in range(images_per_subject)
    ]


def test_subjects_stay_together_and_fractions_are_of_subjects():
    records = assign_splits(_records(100, 3), SplitConfig(val=0.15, test=0.2, seed=1))
    splits_of = {}
    for r in records:
        splits_of.setdefault(r.subject, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())
    subjects_per_split = Counter(next(iter(s)) for s in splits_of.values())
    assert subjects_per_split == {"train": 65, "val": 15, "test": 20}


def test_same_seed_same_split_other_seed_other_split():
    first = [r.split for r in assign_splits(_records(40), SplitConfig(seed=7))]
    again = [r.split for r in assign_splits(_records(40), SplitConfig(seed=7))]
    other = [r.split for r in assign_splits(_records(40), SplitConfig(seed=8))]
    assert first == again and first != other


def test_by_id_ignores_subjects_and_small_datasets_still_get_val_and_test():
    records = assign_splits(_records(1, 10), SplitConfig(by="id", val=0.1, test=0.1, seed=0))
    assert Counter(r.split for r in records) == {"train": 8, "val": 1, "test": 1}
    tiny = assign_splits(_records(3, 1), SplitConfig(val=0.15, test=0.15))
    assert Counter(r.split for r in tiny) == {"train": 1, "val": 1, "test": 1}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (SplitConfig(val=0.6, test=0.5), "leave nothing for training"),
        (SplitConfig(val=-0.1), "must be a fraction"),
        (SplitConfig(by="site"), "choose one of subject, id"),
    ],
)
def test_bad_split_options_are_clear_errors(config: SplitConfig, message: str):
    with pytest.raises(DataError, match=message):
        assign_splits(_records(10), config)


def test_too_few_subjects_is_an_error():
    with pytest.raises(DataError, match="only 2 subjects"):
        assign_splits(_records(2, 5), SplitConfig(val=0.5, test=0.4))


def test_split_dataset_writes_the_manifest_and_keeps_everything_else(toy_dataset: Path):
    before = Dataset.open(toy_dataset)
    counts = split_dataset(toy_dataset, SplitConfig(val=0.34, test=0.34, seed=0))
    after = Dataset.open(toy_dataset)
    assert counts == {"train": 2, "val": 2, "test": 2}  # 3 subjects with 2 images each
    assert [r.split for r in after.records] != ["" for _ in after.records]
    for old, new in zip(before.records, after.records, strict=True):
        assert (old.id, old.image_sha256, old.subject, old.attributes) == (
            new.id,
            new.image_sha256,
            new.subject,
            new.attributes,
        )
    assert len({r.split for r in after.records if r.subject == "s0"}) == 1
