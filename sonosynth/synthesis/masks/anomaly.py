"""Malignant-looking lesions made from benign ones: mask edits after the ultrasound descriptors of malignancy.

A generator that never saw a malignant lesion can still draw one if it is given a malignant-looking mask (the image
model renders the margin it is conditioned on; FetalFlex makes abnormal anatomy this way, without abnormal data).
The edits follow the BI-RADS ultrasound lexicon's signs of malignancy, applied to one structure of a mask:
- `spiculated`: thin spikes radiating from the margin;
- `angular`: a margin with a few sharp corners;
- `microlobulated`: many small lobulations along the margin;
- `taller-than-wide`: the lesion stretched vertically and narrowed, so it is taller than wide (its long axis no
  longer parallel to the skin).
Names combine with `+` (e.g. `spiculated+taller-than-wide`), applied in that order. The margin edits describe
the structure in polar form around its centre (a radius per direction), so they suit roughly star-shaped lesions;
posterior shadowing is the image model's to render, not a mask's.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sonosynth.errors import SonosynthError

ANOMALIES = ("spiculated", "angular", "microlobulated", "taller-than-wide")
DIRECTIONS = 360  # the polar description's resolution, one radius per degree


def parse_anomaly(text: str | None) -> list[str]:
    """`spiculated+taller-than-wide` -> its names, each one of `ANOMALIES` (a one-line error otherwise)."""
    if not text:
        return []
    names = [name.strip() for name in text.split("+")]
    unknown = [name for name in names if name not in ANOMALIES]
    if unknown:
        raise SonosynthError(f"unknown anomaly {unknown[0]!r} (choose from {', '.join(ANOMALIES)}, joined by +)")
    return names


def make_anomaly(mask: np.ndarray, anomaly: str, rng: np.random.Generator, label: int = 1) -> np.ndarray:
    """`mask` with its structure `label` edited by `anomaly` (see the module); other labels are kept where the
    edited structure does not cover them. Deterministic for a given `rng` state."""
    mask = np.asarray(mask)
    region = mask == label
    if not region.any():
        raise SonosynthError(f"anomaly {anomaly}: the mask has no structure with label {label} to edit")
    for name in parse_anomaly(anomaly):
        region = _taller_than_wide(region, rng) if name == "taller-than-wide" else _margin(region, name, rng)
    out = np.where(mask == label, 0, mask).astype(mask.dtype)
    out[region] = label
    return out


def polar_radii(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The region's centre and its boundary radius in each of `DIRECTIONS` directions (the farthest pixel of the
    region there; directions without a pixel interpolated from their neighbours)."""
    ys, xs = np.nonzero(region)
    centre = np.array([ys.mean(), xs.mean()])
    angles, distances = _polar(ys, xs, centre)
    radii = np.zeros(DIRECTIONS)
    np.maximum.at(radii, angles, distances + 0.5)
    known = np.flatnonzero(radii > 0)
    radii = np.interp(np.arange(DIRECTIONS), known, radii[known], period=DIRECTIONS)
    return centre, radii


def _polar(ys: np.ndarray, xs: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dy, dx = ys - centre[0], xs - centre[1]
    angles = (np.degrees(np.arctan2(dy, dx)) % 360 * DIRECTIONS / 360).astype(int) % DIRECTIONS
    return angles, np.hypot(dy, dx)


def _margin(region: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """The region redrawn from its polar radii times a margin profile (1 = unchanged), kept where it was."""
    centre, radii = polar_radii(region)
    theta = np.arange(DIRECTIONS) * 2 * np.pi / DIRECTIONS
    if name == "spiculated":  # 6-12 spikes, each a narrow triangle 40-90 % of the mean radius long
        profile = np.ones(DIRECTIONS)
        for _ in range(int(rng.integers(6, 13))):
            at, width = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(3, 6))
            length = rng.uniform(0.4, 0.9) * radii.mean() / np.maximum(radii, 1)
            distance = np.abs((theta - at + np.pi) % (2 * np.pi) - np.pi)
            profile += length * np.clip(1 - distance / width, 0, None)
    elif name == "angular":  # 3-5 corners: the radius rises linearly to each, 15-30 % above the margin
        corners = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 6))))
        distance = np.min(np.abs((theta[:, None] - corners[None] + np.pi) % (2 * np.pi) - np.pi), axis=1)
        profile = 1 + rng.uniform(0.15, 0.3) * np.clip(1 - distance / (np.pi / len(corners)), 0, None)
    else:  # microlobulated: 12-20 lobes of 6-10 % of the radius
        lobes = int(rng.integers(12, 21))
        profile = 1 + rng.uniform(0.06, 0.1) * np.abs(np.sin(lobes * theta / 2 + rng.uniform(0, np.pi)))
    ys, xs = np.indices(region.shape)
    angles, distances = _polar(ys.ravel(), xs.ravel(), centre)
    inside = (distances <= (radii * profile)[angles]).reshape(region.shape)
    return inside | region


def _taller_than_wide(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The region scaled about its centre (area kept) until its height is 1.2-1.6 x its width."""
    ys, xs = np.nonzero(region)
    height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
    stretch = np.sqrt(rng.uniform(1.2, 1.6) * width / height)  # height x s, width / s: ratio x s^2, area kept
    if stretch <= 1:
        return region
    centre = np.array([ys.mean(), xs.mean()])
    matrix = np.diag([1 / stretch, stretch])  # output pixel p samples the input at centre + M (p - centre)
    scaled = ndimage.affine_transform(region.astype(np.float32), matrix, offset=centre - matrix @ centre, order=1)
    return scaled > 0.5
