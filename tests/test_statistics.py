"""Paired bootstrap intervals and verdicts of the downstream comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sonosynth.evaluation.statistics import (
    BETTER,
    NO_DIFFERENCE,
    WORSE,
    PairedDifference,
    paired_bootstrap,
    per_image_matrix,
)


def test_a_clear_gain_is_better_and_its_interval_holds_the_mean() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.8, 0.9, (3, 200))
    diff = paired_bootstrap(base + 0.02 + rng.normal(0, 0.01, base.shape), base)
    assert diff.low < diff.mean < diff.high and diff.low > 0
    assert diff.mean == pytest.approx(0.02, abs=0.003) and diff.verdict == BETTER
    assert (diff.n_seeds, diff.n_images) == (3, 200)


def test_noise_alone_gives_no_detectable_difference() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.8, 0.9, (3, 200))
    diff = paired_bootstrap(base + rng.normal(0, 0.05, base.shape), base)
    assert diff.low < 0 < diff.high and diff.verdict == NO_DIFFERENCE


def test_lower_is_better_flips_the_verdict_and_undefined_pairs_are_left_out() -> None:
    base = np.full((2, 50), 10.0)
    arm = base - 1.0 + np.random.default_rng(2).normal(0, 0.1, base.shape)
    arm[0, :10] = np.inf  # a missed structure's HD95: no paired value
    arm[1, 20] = np.nan
    diff = paired_bootstrap(arm, base, higher_is_better=False)
    assert diff.verdict == BETTER and diff.mean == pytest.approx(-1.0, abs=0.05)
    assert paired_bootstrap(arm, base, higher_is_better=True).verdict == WORSE
    assert diff.n_images == 50  # every image has a defined difference in at least one seed
    arm[1, :10] = np.nan
    assert paired_bootstrap(arm, base, higher_is_better=False).n_images == 40


def test_seeds_that_disagree_widen_the_interval() -> None:
    base = np.zeros((3, 300))
    steady = paired_bootstrap(base + 0.01, base)
    spread = paired_bootstrap(base + np.array([[0.05], [-0.03], [0.01]]), base)
    assert steady.high - steady.low < 1e-9 and spread.high - spread.low > 0.03
    assert spread.verdict == NO_DIFFERENCE


def test_nothing_to_compare_is_nan_not_a_verdict_of_difference() -> None:
    empty = np.full((2, 4), np.nan)
    diff = paired_bootstrap(empty, empty)
    assert math.isnan(diff.mean) and diff.n_images == 0 and diff.verdict == NO_DIFFERENCE
    with pytest.raises(ValueError, match="share a"):
        paired_bootstrap(np.zeros((2, 3)), np.zeros((3, 2)))


def test_per_image_matrix_follows_the_dice_policy() -> None:
    cells = [
        {"per_image": [
            {"id": "a", "dice": {"1": 0.9}, "in_truth": {"1": True}, "in_pred": {"1": True}, "hc_abs_error_mm": 2.0},
            {"id": "b", "dice": {"1": 0.0}, "in_truth": {"1": False}, "in_pred": {"1": True}, "hc_abs_error_mm": None},
        ]},
    ]
    dice = per_image_matrix(cells, ["a", "b"], "dice", "1")
    assert dice[0, 0] == pytest.approx(0.9) and math.isnan(dice[0, 1])  # no reference lesion: not a Dice
    fp = per_image_matrix(cells, ["a", "b"], "fp", "1")
    assert math.isnan(fp[0, 0]) and fp[0, 1] == 1.0  # a lesion drawn on an image without one
    hc = per_image_matrix(cells, ["b", "a"], "hc_abs_error_mm", None)
    assert math.isnan(hc[0, 0]) and hc[0, 1] == 2.0


def test_brief_is_the_table_cell_in_points() -> None:
    gain = PairedDifference(0.0151, 0.009, 0.022, n_seeds=2, n_images=394, higher_is_better=True)
    assert gain.brief(100) == "+1.5 [+0.9, +2.2] better"
    error = PairedDifference(-1.94, -2.7, -1.1, n_seeds=2, n_images=394, higher_is_better=False)
    assert error.brief() == "-1.9 [-2.7, -1.1] better"
    assert PairedDifference(0.001, -0.002, 0.004, 2, 10, True).brief(100) == "+0.1 [-0.2, +0.4] no diff."


def test_worth_in_annotations_reads_the_real_curve_in_log_k() -> None:
    from sonosynth.evaluation.statistics import equivalent_subjects

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, (3, 200))
    real = {5: 0.80 + noise, 10: 0.85 + noise, 20: 0.90 + noise}
    worth = equivalent_subjects(real, 0.875 + noise, k=5, n_boot=300)
    assert worth.subjects == pytest.approx(10 * 2**0.5, rel=1e-6)  # halfway between 10 and 20 in log k
    assert worth.low < worth.subjects < worth.high and worth.high < 20
    assert worth.brief().startswith("14.1 [") and worth.brief(per_k=True).startswith("2.83 [")
    beyond = equivalent_subjects(real, 0.95 + noise, k=5, n_boot=50)
    assert math.isinf(beyond.subjects) and beyond.brief().startswith("> 20")
    below = equivalent_subjects(real, 0.70 + noise, k=5, n_boot=50)
    assert below.subjects == 0 and below.brief().startswith("< 5")


def test_worth_in_annotations_is_in_the_report() -> None:
    from sonosynth.evaluation.report import worth_markdown, worth_rows

    def cell(k: int, arm: str, seed: int, dice: float) -> dict:
        return {"k": str(k), "arm": arm, "seed": seed,
                "per_image": [{"id": f"i{i}", "dice": {"1": dice + 0.001 * (i % 7)}, "in_truth": {"1": True}}
                              for i in range(40)]}

    cells = [cell(k, "real", s, d) for s in (0, 1) for k, d in ((5, 0.80), (10, 0.85), (20, 0.90))]
    cells += [cell(5, "real+synthetic", s, 0.85) for s in (0, 1)]
    rows = worth_rows(cells, {"1": [1]}, {"0": "background", "1": "head"})
    assert len(rows) == 1 and rows[0]["subjects"] == pytest.approx(10.0, rel=1e-3)
    assert "| 5 | real+synthetic | head | 10.0 [" in worth_markdown(rows) and "| 5,10,20 | 2 |" in worth_markdown(rows)
