"""The selection split: test subjects set aside to choose levers, recipes and defaults on, so that the test split
proper is read once, for the claim.

Cells score every test image (per-image records); a report or an ablation with a selection fraction cuts the
test split's subjects in two, with a fixed seed that no cell uses, and reads the selection part to choose and the
rest to report. Because the cut is made on the per-image records, committed cells can be re-read this way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sonosynth.data.format import Record
from sonosynth.errors import SonosynthError
from sonosynth.metrics import PairScores, summarize

SELECTION_SEED = 20261207  # fixed, and unlike any cell's seed: the cut does not move with the experiment


def selection_ids(test: Sequence[Record], fraction: float) -> set[str]:
    """Ids of the test images whose subjects form the selection part (`fraction` of the test subjects, at least
    one, never all); no subject has images on both sides."""
    if not 0 < fraction < 1:
        raise SonosynthError(f"selection must be a fraction of the test subjects in (0, 1), got {fraction}")
    subjects = sorted({r.subject or r.id for r in test})
    if len(subjects) < 2:
        raise SonosynthError("a selection split needs at least 2 test subjects")
    order = np.random.default_rng(SELECTION_SEED).permutation(len(subjects))
    count = min(max(1, math.ceil(fraction * len(subjects))), len(subjects) - 1)
    chosen = {subjects[i] for i in order[:count]}
    return {r.id for r in test if (r.subject or r.id) in chosen}


def restrict(cell: dict[str, Any], ids: set[str]) -> dict[str, Any]:
    """The cell as if it had been scored on the images `ids` only: per-image records kept, metrics recomputed."""
    kept = [entry for entry in cell["per_image"] if entry["id"] in ids]
    scores = [PairScores(**{k: v for k, v in entry.items() if k != "id"}) for entry in kept]
    return {**cell, "per_image": kept, "n_test_images": len(kept), "metrics": summarize(scores)}
