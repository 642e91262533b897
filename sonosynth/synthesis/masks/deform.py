"""New masks from real ones: a random affine plus a smooth elastic warp, then anatomy repaired.

Deforming real annotations is the cheapest way to get anatomy the model has not seen while
staying plausible; the rules of `topology` reject draws that tear a structure or break nesting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import ndimage

from sonosynth.settings import Config
from sonosynth.synthesis.masks.topology import AnatomyRules, enforce_topology


@dataclass
class DeformConfig(Config):
    """Ranges of the random deformation (uniform draws; fractions are of the image's shorter side)."""

    what: ClassVar[str] = "mask deformation"

    rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    aspect_range: tuple[float, float] = (0.9, 1.1)
    translation_frac: float = 0.05
    elastic_frac: float = 0.03
    elastic_grid: int = 4
    smooth_sigma: float = 0.7
    max_tries: int = 10


@dataclass
class DeformedMask:
    """The result of `deform_mask`: the mask, how many draws it took, and whether all draws broke
    the anatomy rules so the source mask was returned unchanged (recorded in the manifest)."""

    mask: np.ndarray
    attempts: int
    fell_back: bool


def random_warp(mask: np.ndarray, rng: np.random.Generator, config: DeformConfig) -> np.ndarray:
    """One random affine + elastic draw, resampled per label (linear on a slightly blurred one-hot,
    then argmax) so boundaries come out smooth: nearest-neighbour resampling of an already
    stair-stepped mask turns every step into a spike once rotated."""
    mask = np.asarray(mask)
    h, w = mask.shape
    side = min(h, w)
    fg = np.argwhere(mask > 0)
    centre = fg.mean(axis=0) if len(fg) else np.array([(h - 1) / 2, (w - 1) / 2])

    angle = math.radians(rng.uniform(-config.rotation_deg, config.rotation_deg))
    scale = rng.uniform(*config.scale_range)
    aspect = rng.uniform(*config.aspect_range)
    shift = rng.uniform(-config.translation_frac, config.translation_frac, size=2) * side
    # Output pixel p comes from source pixel centre + A^-1 (p - centre - shift) + elastic(p).
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    forward = rotation @ np.diag([scale * math.sqrt(aspect), scale / math.sqrt(aspect)])
    inverse = np.linalg.inv(forward)

    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    rel = np.stack([rows - centre[0] - shift[0], cols - centre[1] - shift[1]])
    source = np.einsum("ij,jhw->ihw", inverse, rel) + centre[:, None, None]
    if config.elastic_frac > 0:
        grid = max(2, config.elastic_grid)
        coarse = rng.normal(0.0, config.elastic_frac * side, size=(2, grid, grid))
        for axis in range(2):
            source[axis] += ndimage.zoom(coarse[axis], (h / grid, w / grid), order=3, mode="nearest")[:h, :w]

    labels = np.unique(mask)
    def channel(v: int) -> np.ndarray:
        one_hot = (mask == v).astype(np.float32)
        if config.smooth_sigma > 0:
            one_hot = ndimage.gaussian_filter(one_hot, config.smooth_sigma, mode="nearest")
        return ndimage.map_coordinates(one_hot, source, order=1, mode="constant", cval=1.0 if v == 0 else 0.0)

    scores = np.stack([channel(int(v)) for v in labels])
    return labels[np.argmax(scores, axis=0)].astype(np.uint8)


def deform_mask(mask: np.ndarray, rng: np.random.Generator, config: DeformConfig | None = None,
                rules: AnatomyRules | None = None) -> DeformedMask:
    """A randomly deformed copy of `mask` that keeps the anatomy rules of the source.

    Each draw is repaired (`enforce_topology`) and checked against `rules` (default: the rules the
    source mask itself satisfies); after `max_tries` failed draws the source mask is returned with
    `fell_back=True` rather than an implausible mask.
    """
    config = config or DeformConfig()
    mask = np.asarray(mask).astype(np.uint8)
    rules = rules or AnatomyRules.of(mask)
    for attempt in range(1, config.max_tries + 1):
        candidate = enforce_topology(random_warp(mask, rng, config), rules)
        if not rules.violations(candidate):
            return DeformedMask(candidate, attempt, fell_back=False)
    return DeformedMask(mask.copy(), config.max_tries, fell_back=True)
