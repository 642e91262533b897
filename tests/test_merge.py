"""`sonosynth data merge`: several datasets as one (a generator pretrained on every ultrasound image one has)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from factories import write_cardiac_dataset, write_toy_dataset
from test_cli_data import run_cli

from sonosynth.data.format import Dataset, update_records
from sonosynth.data.validate import check_dataset


def test_merge_with_foreground_keeps_every_pair_as_one_label(tmp_path: Path, monkeypatch, capsys):
    toy, cardiac = write_toy_dataset(tmp_path / "toy"), write_cardiac_dataset(tmp_path / "cardiac")
    out = tmp_path / "all"
    code, stdout, err = run_cli(["data", "merge", toy, cardiac, "--out", out, "--foreground", "structure"],
                                monkeypatch, capsys)
    assert code == 0, err
    assert "12 pairs" in stdout and "toy: 6" in stdout and "cardiac: 6" in stdout
    merged = Dataset.open(out)
    assert merged.info.labels == {"0": "background", "1": "structure"} and check_dataset(out).ok
    assert merged.info.attributes == {"view": ["a", "b", "2CH", "4CH"]}
    assert [m["dataset"] for m in merged.info.provenance["merged"]] == ["toy", "cardiac"]
    originals = {f"{d.info.name}_{s.id}": s for d in map(Dataset.open, (toy, cardiac)) for s in d}
    assert sorted(originals) == sorted(r.id for r in merged.records)
    for sample in merged:
        original = originals[sample.id]
        assert np.array_equal(sample.image, original.image)
        assert np.array_equal(sample.mask, (original.mask > 0).astype(np.uint8))  # LV, myocardium, LA -> 1
        assert sample.record.subject == f"{sample.record.extra['dataset']}_{original.record.subject}"
        assert sample.record.attributes["view"] == original.record.attributes["view"]
    assert {r.subject for r in merged.records if r.id.startswith("toy_")}.isdisjoint(
        {r.subject for r in merged.records if r.id.startswith("cardiac_")})


def test_merge_of_other_labels_needs_foreground_and_writes_nothing(tmp_path: Path, monkeypatch, capsys):
    toy, cardiac = write_toy_dataset(tmp_path / "toy"), write_cardiac_dataset(tmp_path / "cardiac")
    code, _, err = run_cli(["data", "merge", toy, cardiac, "--out", tmp_path / "all"], monkeypatch, capsys)
    assert code == 1
    assert f"{cardiac}: its labels" in err and "--foreground" in err and "Traceback" not in err
    assert not (tmp_path / "all").exists()


def test_merge_keeps_only_the_splits_asked_for(tmp_path: Path, monkeypatch, capsys):
    toy, other = write_toy_dataset(tmp_path / "toy"), write_toy_dataset(tmp_path / "other", seed=1)
    records = Dataset.open(toy).records
    for i, record in enumerate(records):
        record.split = "test" if i < 2 else "train"
    update_records(toy, records)
    info = json.loads((other / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps({**info, "name": "other", "attributes": {}}))
    code, _, err = run_cli(["data", "merge", toy, other, "--out", tmp_path / "all", "--splits", "train,"],
                           monkeypatch, capsys)  # the empty name: `other`'s pairs, which have no split
    assert code == 0, err
    merged = Dataset.open(tmp_path / "all")
    assert len(merged) == 10 and {r.split for r in merged.records} == {"train", ""}
    assert not any(r.id in ("toy_toy_000", "toy_toy_001") for r in merged.records)  # toy's test pairs
    assert merged.info.labels == {"0": "background", "1": "head"}  # same labels: kept as they are
    # `view` is declared by toy only: a plain column (other's pairs have no value), so the merged dataset is valid
    assert merged.info.attributes == {}
    assert {r.extra["view"] for r in merged.records if r.extra["dataset"] == "toy"} == {"a", "b"}
    assert check_dataset(tmp_path / "all").ok


def test_merge_refuses_two_datasets_of_one_name(tmp_path: Path, monkeypatch, capsys):
    toy, again = write_toy_dataset(tmp_path / "toy"), write_toy_dataset(tmp_path / "again", seed=1)
    code, _, err = run_cli(["data", "merge", toy, again, "--out", tmp_path / "all"], monkeypatch, capsys)
    assert code == 1 and "same name 'toy'" in err
    assert not (tmp_path / "all").exists()
