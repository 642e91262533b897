"""Segmentation metrics in the image's own pixel grid: Dice and HD95 per structure (MONAI), HC error.

A structure is one label or a union of labels (CAMUS: LV epicardium = cavity + myocardium); by
default each foreground label is one structure, keyed by its value.

An empty prediction is a result, not a crash: Dice is 0, HD95 is infinite (the structure was
missed entirely) and the head circumference error is NaN (no ellipse to fit). Aggregation reports
how many such cases there were instead of hiding them in a mean.

Dice policy (one for the whole package): `dice_per_label` is the one Dice computation; a label absent
from both maps has no Dice (NaN), one present in only one map has Dice 0. Reports and validation
(`segmentation.train.validation_dice`, MONAI `ignore_empty`) take a structure's mean over the images
whose reference contains it; images whose reference lacks it instead count towards its false-positive
rate (the share of them where the prediction draws it), e.g. BUSI's normal images. A per-pair score
(mask fidelity, `synthesis.fidelity.mask_dice`) must exist for every pair, so there a label absent from
both maps counts as agreement (1) and the score is the mean over foreground labels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sonosynth.data.ellipse import head_circumference_mm
from sonosynth.errors import SonosynthError


@dataclass
class PairScores:
    """Scores of one predicted label map against its reference."""

    dice: dict[str, float] = field(default_factory=dict)  # structure -> Dice (NaN: absent in both)
    hd95: dict[str, float] = field(default_factory=dict)  # structure -> HD95 (mm if spacing, else px)
    hc_abs_error_mm: float | None = None
    in_truth: dict[str, bool] = field(default_factory=dict)  # structure -> present in the reference
    in_pred: dict[str, bool] = field(default_factory=dict)  # structure -> present in the prediction


Structures = Mapping[str, Sequence[int]]


def label_structures(num_labels: int) -> dict[str, list[int]]:
    """The default structures: each foreground label alone, keyed by its value."""
    return {str(label): [label] for label in range(1, num_labels)}


def parse_structures(items: Sequence[str], num_labels: int) -> dict[str, list[int]]:
    """['LV epicardium=1+2', ...] -> {'LV epicardium': [1, 2]}; labels must exist in the dataset."""
    out: dict[str, list[int]] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        try:
            labels = [int(v) for v in spec.split("+")] if sep else []
        except ValueError:
            labels = []
        if not name.strip() or not labels:
            raise SonosynthError(f"--structure '{item}': expected NAME=LABEL[+LABEL...], e.g. 'LV epicardium=1+2'")
        bad = [v for v in labels if not 1 <= v < num_labels]
        if bad:
            raise SonosynthError(f"--structure '{item}': labels {bad} are not foreground labels 1..{num_labels - 1}")
        out[name.strip()] = labels
    return out


def _one_hot(label_map: np.ndarray, num_labels: int) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(label_map).astype(np.int64))
    return torch.nn.functional.one_hot(x, num_labels).permute(2, 0, 1)[None].float()


def dice_per_label(pred: np.ndarray, truth: np.ndarray, num_labels: int) -> dict[str, float]:
    """Dice of each foreground label (MONAI DiceMetric); NaN where the label is absent from both maps."""
    from monai.metrics import DiceMetric

    p, t = _one_hot(pred, num_labels), _one_hot(truth, num_labels)
    values = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(p, t)[0]
    out = {}
    for label in range(1, num_labels):
        in_pred, in_truth = bool(p[0, label].any()), bool(t[0, label].any())
        out[str(label)] = float("nan") if not (in_pred or in_truth) else float(values[label - 1])
    return out


def hd95_per_label(
    pred: np.ndarray, truth: np.ndarray, num_labels: int, spacing_mm: float | None = None
) -> dict[str, float]:
    """95th-percentile Hausdorff distance per foreground label (MONAI), in mm when spacing is known.

    inf when exactly one of the two maps lacks the label; NaN when both lack it.
    """
    from monai.metrics import compute_hausdorff_distance

    p, t = _one_hot(pred, num_labels), _one_hot(truth, num_labels)
    out = {}
    for label in range(1, num_labels):
        in_pred, in_truth = bool(p[0, label].any()), bool(t[0, label].any())
        if not (in_pred or in_truth):
            out[str(label)] = float("nan")
        elif in_pred != in_truth:
            out[str(label)] = float("inf")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = compute_hausdorff_distance(
                    p[:, label : label + 1], t[:, label : label + 1], include_background=True, percentile=95,
                    spacing=spacing_mm,
                )
            out[str(label)] = float(value.flatten()[0])
    return out


def head_circumference_error_mm(pred: np.ndarray, truth: np.ndarray, spacing_mm: float, label: int = 1) -> float:
    """|HC(pred) - HC(truth)| in mm, both from ellipses fitted to the label's region; NaN if unfittable."""
    hc_pred = head_circumference_mm(np.asarray(pred) == label, spacing_mm)
    hc_true = head_circumference_mm(np.asarray(truth) == label, spacing_mm)
    if hc_pred is None or hc_true is None:
        return float("nan")
    return abs(hc_pred - hc_true)


def score_pair(
    pred: np.ndarray,
    truth: np.ndarray,
    num_labels: int,
    spacing_mm: float | None = None,
    head_label: int | None = None,
    structures: Structures | None = None,
) -> PairScores:
    """All metrics for one image; HC error only when `head_label` and a pixel spacing are given."""
    scores = PairScores()
    pred, truth = np.asarray(pred), np.asarray(truth)
    for name, labels in (structures or label_structures(num_labels)).items():
        p, t = _crop_to_union(np.isin(pred, labels).astype(np.uint8), np.isin(truth, labels).astype(np.uint8))
        scores.dice[name] = dice_per_label(p, t, 2)["1"]
        scores.hd95[name] = hd95_per_label(p, t, 2, spacing_mm)["1"]
        scores.in_truth[name], scores.in_pred[name] = bool(t.any()), bool(p.any())
    if head_label is not None and spacing_mm is not None:
        scores.hc_abs_error_mm = head_circumference_error_mm(pred, truth, spacing_mm, head_label)
    return scores


def _crop_to_union(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both binary maps cut to the box around their union plus one background pixel of margin.

    Dice and surface distances only depend on that box (every foreground and surface pixel is in
    it), so the scores are the same as on the whole image, several times faster on large scans.
    """
    rows, cols = np.nonzero(p | t)
    if rows.size == 0:
        return p[:1, :1], t[:1, :1]
    top, left = max(rows.min() - 1, 0), max(cols.min() - 1, 0)
    box = np.s_[top : rows.max() + 2, left : cols.max() + 2]
    return np.pad(p[box], 1), np.pad(t[box], 1)


def summarize(scores: list[PairScores]) -> dict[str, float]:
    """Means over images: dice_<s> (images whose reference has s), hd95_<s> (finite cases),
    hd95_<s>_missed, fp_rate_<s> (when some references lack s), hc_abs_error_mm."""
    out: dict[str, float] = {"n_images": float(len(scores))}
    if not scores:
        return out
    for name in scores[0].dice:
        in_truth = np.array([s.in_truth.get(name, True) for s in scores])
        dice = np.array([s.dice[name] for s in scores], dtype=np.float64)
        hd = np.array([s.hd95[name] for s in scores], dtype=np.float64)
        out[f"dice_{name}"] = _nanmean(dice[in_truth])
        finite = hd[np.isfinite(hd)]
        out[f"hd95_{name}"] = float(finite.mean()) if finite.size else float("nan")
        out[f"hd95_{name}_missed"] = float(np.isinf(hd).sum())
        if not in_truth.all():
            out[f"fp_rate_{name}"] = float(np.mean([s.in_pred[name] for s in scores if not s.in_truth[name]]))
    hc = [s.hc_abs_error_mm for s in scores if s.hc_abs_error_mm is not None]
    if hc:
        values = np.array(hc, dtype=np.float64)
        out["hc_abs_error_mm"] = _nanmean(values)
        out["hc_unfittable"] = float(np.isnan(values).sum())
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


# ---- classification ----------------------------------------------------------------------------------------


def class_recalls(labels: Sequence[int], predicted: Sequence[int], n_classes: int) -> list[float]:
    """Each class's recall (the share of its images predicted as it); NaN for a class without images."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    return [float((predicted[labels == c] == c).mean()) if (labels == c).any() else math.nan
            for c in range(n_classes)]


def balanced_accuracy(labels: Sequence[int], predicted: Sequence[int], n_classes: int) -> float:
    """The mean recall over the classes present: accuracy that a majority class cannot inflate."""
    return float(np.nanmean(class_recalls(labels, predicted, n_classes)))


def macro_auc(labels: Sequence[int], probabilities: np.ndarray) -> float:
    """The mean one-vs-rest ROC AUC over the classes with both positives and negatives (the Mann-Whitney U
    statistic of each class's probability, ties counted half); NaN when no class has both."""
    from scipy.stats import mannwhitneyu

    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    aucs = []
    for c in range(probabilities.shape[1]):
        positive, negative = probabilities[labels == c, c], probabilities[labels != c, c]
        if len(positive) and len(negative):
            aucs.append(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))
    return float(np.mean(aucs)) if aucs else math.nan
