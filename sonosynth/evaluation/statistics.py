"""Paired comparisons of two arms of the downstream experiment, with 95 % bootstrap intervals.

Two arms at the same k and seed are scored on the same real test images, so the honest unit is
the per-image difference. The interval resamples both sources of variation a reviewer cares
about: seeds (which subjects and initialisation; resampled with replacement) and test images
(resampled with replacement, the same draw for every seed so the pairing holds). The verdict is
read off the interval: it excludes zero on the good side (better), on the bad side (worse), or
it does not (no detectable difference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
SHORT_VERDICTS = {BETTER: "better", WORSE: "worse", NO_DIFFERENCE: "no diff."}  # for narrow tables


@dataclass(frozen=True)
class PairedDifference:
    """Mean of (arm - baseline) over seeds x images, with a percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    n_seeds: int
    n_images: int  # images with a defined difference in at least one seed
    higher_is_better: bool

    @property
    def verdict(self) -> str:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return NO_DIFFERENCE
        if self.low > 0:
            return BETTER if self.higher_is_better else WORSE
        if self.high < 0:
            return WORSE if self.higher_is_better else BETTER
        return NO_DIFFERENCE

    def brief(self, scale: float = 1.0) -> str:
        """`+1.5 [+0.9, +2.2] better`: the table cell (scale 100 turns Dice into points)."""
        interval = f"[{scale * self.low:+.1f}, {scale * self.high:+.1f}]"
        return f"{scale * self.mean:+.1f} {interval} {SHORT_VERDICTS[self.verdict]}"


def paired_bootstrap(
    arm: np.ndarray,
    baseline: np.ndarray,
    higher_is_better: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedDifference:
    """`arm` and `baseline` are (seeds, images) arrays of one metric; NaN marks an undefined value.

    A pair where either value is NaN (or infinite, e.g. a missed structure's HD95) is left out of
    the mean instead of being imputed; the count of images that remain is reported.
    """
    arm, baseline = np.asarray(arm, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if arm.shape != baseline.shape or arm.ndim != 2:
        raise ValueError(f"paired arrays must share a (seeds, images) shape, got {arm.shape} and {baseline.shape}")
    diff = arm - baseline
    diff[~np.isfinite(diff)] = np.nan
    valid = ~np.isnan(diff)
    n_seeds, n_images = diff.shape
    used_images = int(valid.any(axis=0).sum())
    if not valid.any():
        return PairedDifference(math.nan, math.nan, math.nan, n_seeds, 0, higher_is_better)
    filled = np.where(valid, diff, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        seeds = rng.integers(0, n_seeds, n_seeds)
        images = rng.integers(0, n_images, n_images)
        weight = np.bincount(seeds, minlength=n_seeds)[:, None] * np.bincount(images, minlength=n_images)[None, :]
        count = (weight * valid).sum()
        means[b] = (weight * filled).sum() / count if count else np.nan
    low, high = np.nanpercentile(means, [2.5, 97.5])
    return PairedDifference(float(diff[valid].mean()), float(low), float(high), n_seeds, used_images,
                            higher_is_better)


def per_image_matrix(cells: Sequence[dict], ids: Sequence[str], metric: str, structure: str | None) -> np.ndarray:
    """(seeds, images) array of one metric from finished cells (one cell per seed, same test images).

    `metric` is 'dice', 'hd95' or 'fp' (per structure) or 'hc_abs_error_mm'. Dice is only defined
    on images whose reference contains the structure, 'fp' (1 if the prediction draws it, else 0)
    only on images whose reference lacks it (the package's Dice policy, see metrics.py).
    """
    out = np.full((len(cells), len(ids)), np.nan)
    position = {image_id: i for i, image_id in enumerate(ids)}
    for row, cell in enumerate(cells):
        for entry in cell["per_image"]:
            column = position.get(entry["id"])
            if column is None:
                continue
            in_truth = True if structure is None else entry.get("in_truth", {}).get(structure, True)
            if structure is None:
                value = entry.get(metric)
            elif metric == "fp":
                value = None if in_truth else float(entry["in_pred"][structure])
            else:
                value = entry[metric].get(structure) if metric != "dice" or in_truth else None
            out[row, column] = np.nan if value is None else float(value)
    return out


@dataclass(frozen=True)
class EquivalentSubjects:
    """How many real subjects the real-only arm needs to match an arm trained on `k` (its worth in annotations).

    `subjects` is read off the real-only mean-Dice-vs-k curve (made non-decreasing, interpolated linearly in
    log k between the measured k); `inf` means beyond the largest measured k, 0 below the smallest. The
    interval resamples seeds and test images as `paired_bootstrap` does."""

    k: int
    subjects: float
    low: float
    high: float
    measured: tuple[int, ...]

    def brief(self, per_k: bool = False) -> str:
        """`14.1 [11.0, 19.5]` real subjects (or, `per_k`, as multiples of k: `2.83 [2.20, 3.90]`)."""
        scale = self.k if per_k else 1

        def say(value: float) -> str:
            if math.isinf(value):
                return f"> {self.measured[-1] / scale:.{2 if per_k else 0}f}"
            if value == 0:
                return f"< {self.measured[0] / scale:.{2 if per_k else 0}f}"
            return f"{value / scale:.{2 if per_k else 1}f}"
        return f"{say(self.subjects)} [{say(self.low)}, {say(self.high)}]"


def _equivalent_k(curve: np.ndarray, ks: np.ndarray, target: float) -> float:
    """The k at which the (non-decreasing) curve reaches `target`, linear in log k between measured points."""
    curve = np.maximum.accumulate(curve)
    if target > curve[-1]:
        return math.inf
    if target < curve[0]:
        return 0.0
    i = int(np.searchsorted(curve, target, side="left"))
    if i == 0 or curve[i] == curve[i - 1]:
        return float(ks[i])
    t = (target - curve[i - 1]) / (curve[i] - curve[i - 1])
    return float(np.exp(np.log(ks[i - 1]) + t * (np.log(ks[i]) - np.log(ks[i - 1]))))


def equivalent_subjects(real: dict[int, np.ndarray], arm: np.ndarray, k: int, n_boot: int = 2000, seed: int = 0
                        ) -> EquivalentSubjects:
    """`real` maps each measured k to the real-only arm's (seeds, images) metric (higher is better); `arm` is the
    compared arm's (seeds, images) at `k`, on the same seeds and images. NaN marks an undefined value."""
    ks = np.array(sorted(real), dtype=np.float64)
    stacked = np.stack([np.asarray(real[int(x)], dtype=np.float64) for x in ks])  # (k, seeds, images)
    arm = np.asarray(arm, dtype=np.float64)
    if stacked.shape[1:] != arm.shape:
        raise ValueError(f"the real curve's cells {stacked.shape[1:]} and the arm's {arm.shape} differ")
    n_seeds, n_images = arm.shape

    def read(weight: np.ndarray) -> float:
        def mean(values: np.ndarray) -> float:
            valid = np.isfinite(values)
            count = (weight * valid).sum()
            return float((weight * np.where(valid, values, 0.0)).sum() / count) if count else math.nan
        return _equivalent_k(np.array([mean(v) for v in stacked]), ks, mean(arm))

    point = read(np.ones((n_seeds, n_images)))
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        seeds = np.bincount(rng.integers(0, n_seeds, n_seeds), minlength=n_seeds)
        images = np.bincount(rng.integers(0, n_images, n_images), minlength=n_images)
        draws[b] = read(seeds[:, None] * images[None, :])
    # Order statistics, not interpolation: a draw beyond the largest k is `inf`, and stays so.
    low, high = np.percentile(draws, 2.5, method="lower"), np.percentile(draws, 97.5, method="higher")
    return EquivalentSubjects(k, point, float(low), float(high), tuple(int(x) for x in ks))
