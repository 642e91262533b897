"""The statistical shape model: plausible new anatomy, target head circumference, save/load."""

from __future__ import annotations

import numpy as np
import pytest
from factories import cardiac_mask, head_mask

from sonosynth.data.ellipse import head_circumference_mm
from sonosynth.errors import DataError, SonosynthError
from sonosynth.synthesis.masks import AnatomyRules, ShapeModel, ShapeModelConfig


@pytest.fixture(scope="module")
def heads() -> tuple[list[np.ndarray], list[float]]:
    rng = np.random.default_rng(0)
    return [head_mask(rng) for _ in range(24)], list(rng.uniform(0.1, 0.2, size=24))


@pytest.fixture(scope="module")
def head_model(heads) -> ShapeModel:
    return ShapeModel.fit(*heads)


def test_head_samples_are_valid_varied_ellipse_like(head_model):
    rng = np.random.default_rng(1)
    samples = [head_model.sample(rng) for _ in range(6)]
    for s in samples:
        assert s.mask.shape == (48, 64) and not s.fell_back
        assert head_model.rules.violations(s.mask) == []
        assert 0.05 < (s.mask > 0).mean() < 0.6
        assert 0.1 <= s.spacing_mm <= 0.2  # a training pixel size
    assert len({s.mask.tobytes() for s in samples}) == 6
    assert 1 <= head_model.num_modes <= 20


def test_shape_model_learns_the_spread_of_the_training_set(heads, head_model):
    rng = np.random.default_rng(2)
    train_areas = np.array([(m > 0).mean() for m in heads[0]])
    sampled = np.array([(head_model.sample(rng).mask > 0).mean() for _ in range(12)])
    assert train_areas.min() * 0.7 < np.median(sampled) < train_areas.max() * 1.3
    assert sampled.std() > 0.2 * train_areas.std()


@pytest.mark.parametrize("target", [8.0, 12.0, 16.0, 40.0])
def test_target_head_circumference_is_met_within_two_percent(head_model, target):
    sample = head_model.sample(np.random.default_rng(3), target_hc_mm=target)
    measured = head_circumference_mm(sample.mask, sample.spacing_mm)
    assert abs(measured - target) / target < 0.02
    assert head_model.rules.violations(sample.mask) == []
    if target <= 16.0:  # reachable at training pixel sizes (0.1-0.2 mm): the head is resized, not zoomed
        assert 0.1 <= sample.spacing_mm <= 0.2


@pytest.mark.parametrize("labels", ["head", "heart"])
def test_a_widened_size_range_reaches_beyond_the_training_sizes_and_stays_plausible(labels):
    rng = np.random.default_rng(6)
    masks = [head_mask(rng) if labels == "head" else cardiac_mask(rng) for _ in range(20)]
    sizes = np.sqrt([(m > 0).mean() for m in masks])
    size_of = {}
    for widen in (0.0, 0.4):
        model = ShapeModel.fit(masks, 0.3, ShapeModelConfig(grid=48, size_widen=widen))
        samples = [model.sample(rng) for _ in range(24)]
        assert not any(s.fell_back for s in samples)
        assert all(model.rules.violations(s.mask) == [] for s in samples)
        size_of[widen] = np.sqrt([(s.mask > 0).mean() for s in samples])
    assert sizes.min() * 0.9 < size_of[0.0].min() and size_of[0.0].max() < sizes.max() * 1.1
    assert size_of[0.4].min() < sizes.min() * 0.9 and size_of[0.4].max() > sizes.max() * 1.1
    with pytest.raises(SonosynthError, match="size_widen"):
        ShapeModelConfig(size_widen=-0.1)


def test_multilabel_samples_keep_nesting():
    rng = np.random.default_rng(4)
    model = ShapeModel.fit([cardiac_mask(rng) for _ in range(20)], 0.3, ShapeModelConfig(grid=48))
    assert model.rules.required == (1, 2, 3)
    for _ in range(6):
        sample = model.sample(rng)
        assert not sample.fell_back
        assert set(np.unique(sample.mask)) == {0, 1, 2, 3}
        assert model.rules.violations(sample.mask) == []
        assert (0, 1) not in AnatomyRules.of(sample.mask).allowed_contacts  # LV still inside myocardium


def test_save_load_round_trip(tmp_path, head_model):
    folder = head_model.save(tmp_path / "shape")
    loaded = ShapeModel.load(folder)
    a = head_model.sample(np.random.default_rng(5), target_hc_mm=12.0)
    b = loaded.sample(np.random.default_rng(5), target_hc_mm=12.0)
    assert np.array_equal(a.mask, b.mask) and a.spacing_mm == b.spacing_mm
    assert loaded.rules == head_model.rules and loaded.canvas == head_model.canvas


def test_bad_inputs_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="at least 2 masks"):
        ShapeModel.fit([np.zeros((8, 8), np.uint8)])
    with pytest.raises(DataError, match="empty"):
        ShapeModel.fit([np.zeros((8, 8), np.uint8)] * 3)
    with pytest.raises(DataError, match="not a saved shape model"):
        ShapeModel.load(tmp_path)
