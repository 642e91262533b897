"""The cells of a downstream experiment (segmentation or classification): arms, names, convergence."""

from __future__ import annotations

from dataclasses import dataclass

ARMS = ("real", "real+classical", "real+synthetic", "real+synthetic+classical", "synthetic")
# With unannotated scans (`--unannotated`): self-training on them, the baseline of that protocol (`pseudo_labels.py`),
# and both sources of extra pairs at once (the synthetic pairs and the pseudo-labelled scans).
PSEUDO_LABEL_ARMS = ("real+pseudo-labels", "real+pseudo-labels+classical", "real+synthetic+pseudo-labels",
                     "real+synthetic+pseudo-labels+classical")
CELLS_DIR = "cells"


@dataclass(frozen=True)
class Cell:
    k: str  # "-" for the synthetic-only arm, which uses no real training data
    arm: str
    seed: int

    @property
    def name(self) -> str:
        return f"k{self.k if self.k != '-' else 'none'}__{self.arm}__seed{self.seed}"


def uses_synthetic(arm: str) -> bool:
    return "synthetic" in arm


def uses_pseudo_labels(arm: str) -> bool:
    return "pseudo-labels" in arm


def real_arm(arm: str) -> str:
    """The arm with the real pairs alone and the same augmentation (a pseudo-labels arm's teacher)."""
    return "real+classical" if uses_classical(arm) else "real"


def uses_classical(arm: str) -> bool:
    return arm.endswith("+classical")


def converged(history: list[dict[str, float]], patience: int, score: str = "val_dice") -> bool:
    """Validation stopped improving: the last `patience` validations were all below the best one, and the best is
    not the very first check (a model best before it trained is a noisy validation set's luck, not convergence:
    give such a set `--min-steps`)."""
    scores = [h[score] for h in history if score in h]
    return bool(scores) and 0 < scores.index(max(scores)) < len(scores) - patience
