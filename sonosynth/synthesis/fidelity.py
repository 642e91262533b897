"""Mask fidelity: does a generated image really show the anatomy of its conditioning mask?

A segmenter trained on real data is run on each synthetic image; the Dice between its prediction
and the conditioning mask measures how faithfully the generator followed the mask. Samples below
a threshold are dropped (or kept and flagged) so a synthetic training set does not teach a
segmenter wrong boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sonosynth.errors import SonosynthError

Predictor = Callable[[Sequence[np.ndarray]], Sequence[np.ndarray]]
"""images (2-D uint8/uint16 arrays) -> predicted label maps of the same sizes."""

MODES = ("drop", "flag")


@dataclass
class FidelityFilter:
    """Keep a sample when its Dice >= `threshold`; otherwise drop it or, with mode 'flag', keep it
    with `flagged=True` in the manifest (so users can inspect what the filter would remove)."""

    threshold: float = 0.9
    mode: str = "drop"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SonosynthError(f"fidelity filter mode must be one of {list(MODES)}, got '{self.mode}'")
        if not 0.0 <= self.threshold <= 1.0:
            raise SonosynthError(f"fidelity threshold must be in [0, 1], got {self.threshold}")

    def decide(self, dice: float) -> tuple[bool, bool]:
        """(keep, flagged) for one sample's score."""
        passed = dice >= self.threshold
        if passed:
            return True, False
        return self.mode == "flag", True

    def to_dict(self) -> dict:
        return asdict(self)


def mask_dice(conditioning: np.ndarray, predicted: np.ndarray, num_labels: int) -> float:
    """Mean Dice over foreground labels (`metrics.dice_per_label`, the package's one Dice); a label absent
    from both counts as agreement (1), a label in only one of them as 0, so spurious structures are
    penalised too (see the Dice policy in `metrics.py`)."""
    from sonosynth.metrics import dice_per_label

    conditioning, predicted = np.asarray(conditioning), np.asarray(predicted)
    if conditioning.shape != predicted.shape:
        raise SonosynthError(f"prediction of shape {predicted.shape} does not match mask shape {conditioning.shape}")
    if num_labels < 2:
        raise SonosynthError(f"need at least one foreground label, got num_labels={num_labels}")
    clip = np.clip(predicted.astype(np.int64), 0, num_labels - 1)
    per_label = dice_per_label(clip, np.clip(conditioning.astype(np.int64), 0, num_labels - 1), num_labels)
    return float(np.mean([1.0 if math.isnan(v) else v for v in per_label.values()]))


def score_samples(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], predict: Predictor,
                  num_labels: int) -> list[float]:
    """Dice between each conditioning mask and the predictor's segmentation of its image."""
    if len(images) != len(masks):
        raise SonosynthError(f"{len(images)} images but {len(masks)} masks")
    if not images:
        return []
    predictions = list(predict(list(images)))
    if len(predictions) != len(images):
        raise SonosynthError(f"the segmenter returned {len(predictions)} masks for {len(images)} images")
    return [mask_dice(m, p, num_labels) for m, p in zip(masks, predictions, strict=True)]


def hardest_ids(records: Sequence[Any], counts: dict[str, int]) -> list[str]:
    """The ids of the pairs a segmenter gets most wrong: per mask source (`mask_source` column) the `counts[source]`
    with the lowest `fidelity_dice`, ties by id. Segmenter-in-the-loop synthesis keeps these among many candidates:
    the anatomy and appearance the segmenter trained on the k subjects has not learned yet."""
    chosen = []
    for source, n in counts.items():
        scored = [(float(r.extra["fidelity_dice"]), r.id) for r in records if r.extra.get("mask_source") == source]
        if len(scored) < n:
            raise SonosynthError(f"only {len(scored)} scored '{source}' candidates for {n} hardest pairs")
        chosen += [i for _, i in sorted(scored)[:n]]
    return chosen


def segmenter_predictor(segrun: str | Path, batch_size: int = 16, device: str = "cpu") -> tuple[Predictor, int]:
    """A predictor from a segmenter run folder (`sonosynth segment train`), and its number of labels."""
    from sonosynth.segmentation.predict import load_segmenter, predict_masks

    segmenter = load_segmenter(segrun, device)

    def predict(images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return predict_masks(segmenter, images, batch_size=batch_size)

    return predict, segmenter.num_labels
