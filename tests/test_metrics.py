"""Segmentation metrics: Dice, HD95 (px and mm), head-circumference error, empty predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sonosynth.data.ellipse import Ellipse
from sonosynth.errors import SonosynthError
from sonosynth.metrics import (
    dice_per_label,
    hd95_per_label,
    head_circumference_error_mm,
    parse_structures,
    score_pair,
    summarize,
)

SHAPE = (90, 120)


def ellipse(cx: float, a: float = 40, b: float = 25) -> np.ndarray:
    return Ellipse(cx, 45, a, b, 0.2).rasterize(SHAPE).astype(np.uint8)


def test_dice_matches_the_definition_per_label() -> None:
    truth = ellipse(60)
    pred = ellipse(63)
    expected = 2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum())
    assert dice_per_label(pred, truth, 2)["1"] == pytest.approx(expected, rel=1e-5)
    assert dice_per_label(truth, truth, 2)["1"] == pytest.approx(1.0)


def test_multi_label_dice_and_absent_labels() -> None:
    truth = ellipse(60)
    truth[40:50, 55:65] = 2
    pred = truth.copy()
    pred[pred == 2] = 1  # label 2 missed entirely
    scores = dice_per_label(pred, truth, 4)
    assert scores["1"] < 1.0 and scores["2"] == 0.0
    assert math.isnan(scores["3"])  # absent in both: not a score


def test_hd95_is_a_shift_in_pixels_and_scales_with_spacing() -> None:
    truth, pred = ellipse(60), ellipse(64)
    px = hd95_per_label(pred, truth, 2)["1"]
    mm = hd95_per_label(pred, truth, 2, spacing_mm=0.25)["1"]
    assert 3.0 <= px <= 4.5
    assert mm == pytest.approx(px * 0.25, rel=1e-4)


def test_empty_prediction_is_reported_not_crashed() -> None:
    truth, empty = ellipse(60), np.zeros(SHAPE, np.uint8)
    scores = score_pair(empty, truth, 2, spacing_mm=0.2, head_label=1)
    assert scores.dice["1"] == 0.0
    assert math.isinf(scores.hd95["1"])
    assert math.isnan(scores.hc_abs_error_mm)
    summary = summarize([scores, score_pair(truth, truth, 2, 0.2, 1)])
    assert summary["hd95_1_missed"] == 1 and summary["hd95_1"] == 0.0  # the finite case only
    assert summary["hc_unfittable"] == 1 and summary["hc_abs_error_mm"] == pytest.approx(0.0, abs=1e-6)
    assert summary["dice_1"] == pytest.approx(0.5)


def test_head_circumference_error_in_mm() -> None:
    spacing = 0.1
    truth, bigger = ellipse(60, 40, 25), ellipse(60, 44, 25)
    expected = abs(Ellipse(0, 0, 44, 25, 0).circumference(spacing) - Ellipse(0, 0, 40, 25, 0).circumference(spacing))
    assert head_circumference_error_mm(bigger, truth, spacing) == pytest.approx(expected, abs=0.15)
    assert head_circumference_error_mm(truth, truth, spacing) == pytest.approx(0.0, abs=1e-9)


def test_structures_union_labels_and_count_false_positives() -> None:
    truth = ellipse(60)
    truth[40:50, 55:65] = 2
    pred = truth.copy()
    pred[pred == 2] = 1  # label 2 drawn as label 1: wrong per label, right as the union
    structures = parse_structures(["cavity=1", "epicardium=1+2"], num_labels=3)
    assert structures == {"cavity": [1], "epicardium": [1, 2]}
    scores = score_pair(pred, truth, 3, structures=structures)
    assert scores.dice["cavity"] < 1.0 and scores.dice["epicardium"] == pytest.approx(1.0)
    assert scores.in_truth == {"cavity": True, "epicardium": True}

    empty = np.zeros(SHAPE, np.uint8)  # a normal image: no lesion in the reference
    clean, false_positive = score_pair(empty, empty, 2), score_pair(truth.clip(0, 1), empty, 2)
    hit = score_pair(truth.clip(0, 1), truth.clip(0, 1), 2)
    summary = summarize([clean, false_positive, hit])
    assert summary["dice_1"] == pytest.approx(1.0)  # Dice over the images that have a lesion
    assert summary["fp_rate_1"] == pytest.approx(0.5)  # one of the two lesion-free images got one
    assert "fp_rate_1" not in summarize([hit])
    for bad in (["epi=1+9"], ["epi"], ["=1"], ["x=a"]):
        with pytest.raises(SonosynthError, match="--structure"):
            parse_structures(bad, num_labels=3)
