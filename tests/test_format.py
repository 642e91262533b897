from pathlib import Path

import numpy as np
import pytest

from sonosynth.data.format import Dataset, DatasetInfo, DatasetWriter
from sonosynth.errors import DataError


def test_write_then_open_round_trip(toy_dataset: Path):
    ds = Dataset.open(toy_dataset)
    assert len(ds) == 6
    assert ds.info.num_labels == 2
    sample = ds[0]
    assert sample.image.dtype == np.uint8 and sample.image.shape == (48, 64)
    assert set(np.unique(sample.mask)) <= {0, 1}
    assert sample.record.attributes == {"view": "a"}
    assert ds.subjects == ["s0", "s1", "s2"]
    assert len(ds.subset(ids=["toy_001"])) == 1


def test_failed_writer_leaves_nothing(tmp_path: Path):
    info = DatasetInfo(name="x", labels={"0": "bg", "1": "fg"})
    out = tmp_path / "out"
    with pytest.raises(DataError, match="outside the declared labels"), DatasetWriter(out, info) as writer:
        writer.add("a", np.zeros((4, 4), np.uint8), np.full((4, 4), 3, np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_refused_unless_overwrite(toy_dataset: Path):
    info = DatasetInfo(name="x", labels={"0": "bg", "1": "fg"})
    with pytest.raises(DataError, match="already exists"):
        DatasetWriter(toy_dataset, info)
    with DatasetWriter(toy_dataset, info, overwrite=True) as writer:
        writer.add("only", np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    assert len(Dataset.open(toy_dataset)) == 1


def test_size_mismatch_names_the_source(tmp_path: Path):
    info = DatasetInfo(name="x", labels={"0": "bg", "1": "fg"})
    with pytest.raises(DataError, match=r"case7.png: image size"), DatasetWriter(tmp_path / "o", info) as writer:
        writer.add("a", np.zeros((4, 5), np.uint8), np.zeros((4, 4), np.uint8), source="case7.png")
