"""Fidelity scoring and filtering, with fake predictors whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from factories import write_toy_dataset

from sonosynth.errors import SonosynthError
from sonosynth.synthesis.fidelity import FidelityFilter, mask_dice, score_samples


def square_mask(size: int = 16, lo: int = 4, hi: int = 12, label: int = 1) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[lo:hi, lo:hi] = label
    return mask


def test_mask_dice_matches_hand_computation():
    a = square_mask(lo=4, hi=12)  # 64 px
    b = np.zeros_like(a)
    b[4:12, 4:8] = 1  # 32 px, all inside a
    assert mask_dice(a, a, 2) == pytest.approx(1.0)
    assert mask_dice(a, b, 2) == pytest.approx(2 * 32 / (64 + 32))
    assert mask_dice(a, np.zeros_like(a), 2) == pytest.approx(0.0)


def test_mask_dice_penalises_spurious_labels_and_averages_foreground():
    truth = square_mask()
    predicted = truth.copy()
    predicted[0:2, 0:2] = 2  # a structure the mask does not have
    assert mask_dice(truth, predicted, 3) == pytest.approx(0.5)
    assert mask_dice(truth, truth, 3) == pytest.approx(1.0)  # label 2 absent from both: agreement


def test_score_samples_uses_the_predictor_on_the_images():
    masks = [square_mask(), square_mask(lo=2, hi=10)]
    images = [(m * 200).astype(np.uint8) for m in masks]
    images[1][:] = 0  # the second image does not show its structure
    threshold_segmenter = [(im > 100).astype(np.uint8) for im in images]
    seen = []

    def predict(batch):
        seen.append(len(batch))
        return [(im > 100).astype(np.uint8) for im in batch]

    scores = score_samples(images, masks, predict, num_labels=2)
    assert seen == [2]
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(0.0)
    assert scores == [mask_dice(m, p, 2) for m, p in zip(masks, threshold_segmenter, strict=True)]


def test_score_samples_rejects_a_predictor_that_loses_images():
    with pytest.raises(SonosynthError, match="returned 1 masks for 2 images"):
        score_samples([square_mask()] * 2, [square_mask()] * 2, lambda batch: batch[:1], 2)


@pytest.mark.parametrize(("mode", "expected"), [("drop", (False, True)), ("flag", (True, True))])
def test_filter_drops_or_flags_below_threshold(mode, expected):
    rule = FidelityFilter(threshold=0.8, mode=mode)
    assert rule.decide(0.95) == (True, False)
    assert rule.decide(0.8) == (True, False)
    assert rule.decide(0.5) == expected


def test_filter_rejects_bad_settings():
    with pytest.raises(SonosynthError, match="mode"):
        FidelityFilter(mode="discard")
    with pytest.raises(SonosynthError, match="threshold"):
        FidelityFilter(threshold=1.5)


def test_segmenter_run_as_predictor(tmp_path):
    """The filter is wired to `sonosynth segment train` runs: a tiny one predicts label maps of image size."""


    from sonosynth.data.format import Dataset
    from sonosynth.segmentation.common import SegmentationConfig
    from sonosynth.segmentation.train import train_from_folders
    from sonosynth.synthesis.fidelity import segmenter_predictor

    data = write_toy_dataset(tmp_path / "toy", n=6)
    config = SegmentationConfig(size=32, net="tiny", max_steps=2, batch_size=2, val_every=1)
    segrun = train_from_folders(data, tmp_path / "seg", config, progress=False, auto_split=True)
    predict, num_labels = segmenter_predictor(segrun)
    samples = list(Dataset.open(data))[:2]
    scores = score_samples([s.image for s in samples], [s.mask for s in samples], predict, num_labels)
    assert num_labels == 2 and len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
