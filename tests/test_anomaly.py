"""Malignant-looking lesions by name (`synthesis/masks/anomaly.py`): each edit does what its descriptor says, is
seeded, keeps the other labels, and reaches `generate --anomaly` and `edit --anomaly`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import ellipse_pair, save_tiny_run, write_toy_dataset
from skimage.measure import perimeter
from typer.testing import CliRunner

from sonosynth.cli import app
from sonosynth.data.format import Dataset
from sonosynth.data.imageio import read_label_map, write_png
from sonosynth.errors import SonosynthError
from sonosynth.synthesis.masks.anomaly import ANOMALIES, make_anomaly, parse_anomaly


def lesion() -> np.ndarray:
    """A benign-looking lesion: a smooth ellipse wider than tall (parallel to the skin), label 1, beside label 2."""
    yy, xx = np.mgrid[:96, :128]
    mask = ((((yy - 48) / 14) ** 2 + ((xx - 60) / 24) ** 2) <= 1).astype(np.uint8)
    mask[80:90, 110:120] = 2
    return mask


def irregularity(region: np.ndarray) -> float:
    """Perimeter^2 / (4 pi area): 1 for a disc, larger for a rougher or more elongated margin."""
    return float(perimeter(region) ** 2 / (4 * np.pi * region.sum()))


def height_over_width(region: np.ndarray) -> float:
    ys, xs = np.nonzero(region)
    return float((np.ptp(ys) + 1) / (np.ptp(xs) + 1))


@pytest.mark.parametrize("name", ANOMALIES)
def test_each_anomaly_does_what_its_descriptor_says(name: str) -> None:
    mask = lesion()
    before = mask == 1
    edited = make_anomaly(mask, name, np.random.default_rng(0))
    after = edited == 1
    assert (edited == 2).sum() == (mask == 2).sum()  # the other structure is kept
    assert np.array_equal(edited, make_anomaly(mask, name, np.random.default_rng(0)))  # seeded
    assert not np.array_equal(edited, make_anomaly(mask, name, np.random.default_rng(1)))
    if name == "taller-than-wide":
        assert height_over_width(before) < 0.7 and height_over_width(after) >= 1.15
        assert after.sum() == pytest.approx(before.sum(), rel=0.1)  # the same lesion, turned upright
    else:  # a rougher margin around the whole lesion, which stays inside it
        assert (after | before).sum() == after.sum()
        rise = {"spiculated": 2.0, "angular": 1.2, "microlobulated": 1.1}[name]
        assert irregularity(after) > rise * irregularity(before), (irregularity(after), irregularity(before))


def test_anomalies_combine_and_bad_names_or_masks_are_one_line() -> None:
    edited = make_anomaly(lesion(), "spiculated+taller-than-wide", np.random.default_rng(0)) == 1
    assert height_over_width(edited) > 1.1 and irregularity(edited) > 2 * irregularity(lesion() == 1)
    assert parse_anomaly(None) == [] and parse_anomaly("angular+spiculated") == ["angular", "spiculated"]
    with pytest.raises(SonosynthError, match="unknown anomaly 'round'"):
        parse_anomaly("spiculated+round")
    with pytest.raises(SonosynthError, match="no structure with label 1"):
        make_anomaly(np.zeros((8, 8), np.uint8), "angular", np.random.default_rng(0))


def test_generate_draws_every_lesion_as_the_named_anomaly(tmp_path: Path) -> None:
    """Train masks, each source once: with --anomaly spiculated every pair's lesion is its source's, grown by
    spikes (at the model's 32 px grid); without, it is the source's as it is."""
    from sonosynth.synthesis.generate import GenerateConfig, generate_dataset

    run = save_tiny_run(tmp_path / "run")
    source = write_toy_dataset(tmp_path / "toy", n=6)
    plain = Dataset.open(generate_dataset(run, source, tmp_path / "plain", GenerateConfig(
        mask_source="train", n=6, steps=2, batch_size=3, seed=1), progress=False))
    spiky = Dataset.open(generate_dataset(run, source, tmp_path / "spiky", GenerateConfig(
        mask_source="train", n=6, steps=2, batch_size=3, seed=1, anomaly="spiculated"), progress=False))
    assert "anomaly" not in plain.records[0].extra and {r.extra["anomaly"] for r in spiky.records} == {"spiculated"}
    as_drawn = {s.record.extra["source_id"]: s.mask == 1 for s in plain}
    for sample in spiky:
        before, after = as_drawn[sample.record.extra["source_id"]], sample.mask == 1
        assert (before & ~after).sum() == 0 and after.sum() > before.sum(), sample.record.id
    with pytest.raises(SonosynthError, match="unknown anomaly"):
        GenerateConfig(anomaly="spiky")


def test_edit_makes_the_anomaly_of_a_real_lesion_by_name(tmp_path: Path) -> None:
    run = save_tiny_run(tmp_path / "run", size=32)
    image, mask = ellipse_pair(np.random.default_rng(0), height=40, width=56)
    write_png(tmp_path / "image.png", image)
    write_png(tmp_path / "mask.png", mask)
    runner = CliRunner()
    args = ["edit", str(run), "--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"),
            "--steps", "4", "--jump-n-sample", "1", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--anomaly", "angular", "--out", str(tmp_path / "edit")])
    assert result.exit_code == 0, result.output
    edited = read_label_map(tmp_path / "edit" / "mask.png")
    assert np.array_equal(edited, make_anomaly(mask, "angular", np.random.default_rng(0)))
    assert json.loads((tmp_path / "edit" / "edit.json").read_text())["anomaly"] == "angular"
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "neither")])
    assert result.exit_code == 1 and not (tmp_path / "neither").exists()
    assert "give the edited mask (--edited-mask) or an anomaly" in str(result.exception)
