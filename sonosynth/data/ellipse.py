"""Ellipses: fitting to masks or outline pixels, rasterising, and circumference (head biometry)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.measure import EllipseModel, find_contours


@dataclass(frozen=True)
class Ellipse:
    """Centre (x, y) in pixels, semi-axes a >= b in pixels, rotation theta in radians."""

    cx: float
    cy: float
    a: float
    b: float
    theta: float

    def circumference(self, spacing_mm: float = 1.0) -> float:
        """Ramanujan's second approximation (error < 1e-9 relative for head-like ellipses)."""
        a, b = self.a * spacing_mm, self.b * spacing_mm
        h = ((a - b) / (a + b)) ** 2
        return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))

    def rasterize(self, shape: tuple[int, int]) -> np.ndarray:
        """Filled ellipse as a boolean mask of `shape` (pixel centres inside the ellipse)."""
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
        dx, dy = xx - self.cx, yy - self.cy
        c, s = math.cos(self.theta), math.sin(self.theta)
        u, v = dx * c + dy * s, -dx * s + dy * c
        return (u / self.a) ** 2 + (v / self.b) ** 2 <= 1.0


def fit_ellipse_to_points(xy: np.ndarray) -> Ellipse | None:
    """Least-squares ellipse through (N, 2) x/y points; None when the points do not define one."""
    if len(xy) < 5:
        return None
    points = np.asarray(xy, dtype=np.float64)
    if hasattr(EllipseModel, "from_estimate"):  # scikit-image >= 0.26
        model = EllipseModel.from_estimate(points)
        if not model:
            return None
        (cx, cy), (a, b), theta = model.center, model.axis_lengths, model.theta
    else:  # older scikit-image
        model = EllipseModel()
        if not model.estimate(points):
            return None
        cx, cy, a, b, theta = model.params
    cx, cy, a, b, theta = (float(v) for v in (cx, cy, a, b, theta))
    if not all(math.isfinite(v) for v in (cx, cy, a, b, theta)) or min(a, b) <= 0:
        return None
    if b > a:
        a, b, theta = b, a, theta + math.pi / 2
    return Ellipse(cx, cy, a, b, theta)


def fit_ellipse_to_mask(mask: np.ndarray) -> Ellipse | None:
    """Fit an ellipse to the boundary of a filled region (sub-pixel contour at level 0.5)."""
    binary = np.pad(np.asarray(mask) > 0, 1).astype(np.float64)
    contours = find_contours(binary, 0.5)
    if not contours:
        return None
    longest = max(contours, key=len) - 1.0  # undo padding; rows are (y, x)
    return fit_ellipse_to_points(longest[:, ::-1])


def head_circumference_mm(mask: np.ndarray, spacing_mm: float) -> float | None:
    """Head circumference of a filled head mask, via the fitted ellipse (HC18 convention)."""
    ellipse = fit_ellipse_to_mask(mask)
    return None if ellipse is None else ellipse.circumference(spacing_mm)
