"""Region editing (RePaint): outside the edit region the image is untouched; inside it changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from factories import ellipse_pair, oracle_for_constant, save_tiny_run

from sonosynth.data.imageio import read_image, read_label_map, write_png
from sonosynth.errors import DataError
from sonosynth.synthesis.edit import EditConfig, edit_files, edit_region, repaint
from sonosynth.synthesis.sampling import load_synthesis_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_synthesis_model(save_tiny_run(tmp_path_factory.mktemp("run") / "run", size=32))


@pytest.fixture
def pair():
    image, mask = ellipse_pair(np.random.default_rng(0), height=40, width=56)  # not square: letterboxed
    edited = mask.copy()
    edited[5:14, 6:16] = 1  # a new structure ("lesion") away from the head
    return image, mask, edited


def test_edit_region_is_the_difference_plus_margin():
    mask = np.zeros((20, 20), np.uint8)
    edited = mask.copy()
    edited[10, 10] = 1
    assert edit_region(mask, edited, 0).sum() == 1
    region = edit_region(mask, edited, 3)
    assert region[10, 13] and region[7, 10] and region[12, 12] and not region[10, 14] and not region[13, 13]
    assert region.sum() == 29  # lattice points in a disc of radius 3


def test_repaint_changes_only_the_edit_region(model, pair):
    image, mask, edited = pair
    config = EditConfig(steps=6, jump_length=2, jump_n_sample=2, margin_px=3)
    result = repaint(model, image, mask, edited, config)
    assert result.image.shape == image.shape and result.image.dtype == image.dtype
    assert np.array_equal(result.image[~result.region], image[~result.region])
    assert np.array_equal(result.region, edit_region(mask, edited, 3))
    changed = result.image[edited != mask].astype(int) - image[edited != mask].astype(int)
    assert np.abs(changed).mean() > 5
    assert np.array_equal(result.mask, edited)
    # RePaint resampling: 6 denoising steps, plus at t = 0 and 2 (every jump_length below steps - jump_length)
    # (jump_n_sample - 1) = 1 re-noise of jump_length = 2 steps that are denoised again.
    assert result.model_evaluations == 6 + 2 * 1 * 2


def test_repaint_is_reproducible_and_seeded(model, pair):
    image, mask, edited = pair
    a = repaint(model, image, mask, edited, EditConfig(steps=3, jump_n_sample=1, seed=1)).image
    b = repaint(model, image, mask, edited, EditConfig(steps=3, jump_n_sample=1, seed=1)).image
    c = repaint(model, image, mask, edited, EditConfig(steps=3, jump_n_sample=1, seed=2)).image
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_repaint_rejects_bad_input(model, pair):
    image, mask, edited = pair
    with pytest.raises(DataError, match="nothing to edit"):
        repaint(model, image, mask, mask)
    with pytest.raises(DataError, match="same size"):
        repaint(model, image, mask, edited[:-1])
    with pytest.raises(DataError, match="label 7"):
        repaint(model, image, mask, np.where(edited > 0, 7, 0).astype(np.uint8))


def test_edit_files_writes_an_output_folder(tmp_path, pair):
    run = save_tiny_run(tmp_path / "run", size=32)
    image, mask, edited = pair
    for name, array in (("image", image), ("mask", mask), ("edited", edited)):
        write_png(tmp_path / f"{name}.png", array)
    out = edit_files(run, tmp_path / "image.png", tmp_path / "mask.png", tmp_path / "edited.png", tmp_path / "out",
                     EditConfig(steps=2, jump_n_sample=1))
    written = read_image(out / "image.png")
    region = read_label_map(out / "region.png") > 0
    assert np.array_equal(written[~region], image[~region])
    assert np.array_equal(read_label_map(out / "mask.png"), edited)
    assert json.loads((out / "edit.json").read_text())["model_evaluations"] == 2
    with pytest.raises(DataError, match="already exists"):
        edit_files(run, tmp_path / "image.png", tmp_path / "mask.png", tmp_path / "edited.png", out)


def test_edit_command_line(tmp_path, pair):
    from typer.testing import CliRunner

    from sonosynth.cli import app

    run = save_tiny_run(tmp_path / "run", size=32)
    image, mask, edited = pair
    for name, array in (("image", image), ("mask", mask), ("edited", edited)):
        write_png(tmp_path / f"{name}.png", array)
    args = ["edit", str(run), "--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"),
            "--edited-mask", str(tmp_path / "edited.png"), "--steps", "2", "--jump-n-sample", "1", "--margin", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    region = read_label_map(tmp_path / "out" / "region.png") > 0
    assert np.array_equal(region, edit_region(mask, edited, 2))
    result = CliRunner().invoke(app, [*args, "--attr", "view=a", "--out", str(tmp_path / "out2")])
    assert "not conditioned on ['view']" in str(result.exception)


def test_repaint_with_an_exact_model_paints_what_it_predicts(model, pair, monkeypatch):
    from scipy import ndimage

    assert model.pipe.scheduler.config.prediction_type == "v_prediction"
    monkeypatch.setattr(model.unet, "forward", oracle_for_constant(model, 0.4))
    image, mask, edited = pair
    result = repaint(model, image, mask, edited, EditConfig(steps=10, jump_length=2, jump_n_sample=2, margin_px=2))
    core = ndimage.binary_erosion(result.region, iterations=3)
    assert core.any()
    assert np.abs(result.image[core].astype(float) - 0.7 * 255).max() <= 3  # 0.4 in [-1, 1] is 178.5
    assert np.array_equal(result.image[~result.region], image[~result.region])
