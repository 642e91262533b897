"""Random but plausible anatomy: fetal head, apical four-chamber heart, breast with or without a lesion.

A generator builds a `Scene`: shapes (functions of image coordinates x, y) painted in order into
a tissue map and a label mask, plus the probe geometry and the parameters drawn. Shapes are
evaluated analytically, on the image grid for the mask and on the probe's simulation grid for the
tissue map, so the mask and the simulated image are aligned without resampling a label map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sonosynth.phantom.acoustics import (
    AcousticConfig,
    ProbeGeometry,
    Tissue,
    fan_mask,
    linear_geometry,
    sector_geometry,
)

Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(x, y) coordinate arrays -> boolean array: which points lie inside."""

# Echogenicity is an amplitude relative to reference soft tissue; impedance in MRayl; attenuation in dB/(cm MHz).
DEFAULT_TISSUES: dict[str, Tissue] = {
    "soft_tissue": Tissue(0.30, 1.0, 0.54, 1.63),
    "abdominal_wall": Tissue(0.55, 1.0, 0.6, 1.66),
    "placenta": Tissue(0.45, 1.0, 0.6, 1.62),
    "amniotic_fluid": Tissue(0.012, 0.05, 0.002, 1.52),
    "brain": Tissue(0.10, 0.8, 0.6, 1.58),
    "skull": Tissue(2.2, 1.0, 3.5, 3.5),
    "midline": Tissue(0.8, 1.0, 0.6, 1.68),
    "choroid_plexus": Tissue(0.6, 1.0, 0.6, 1.64),
    "csp": Tissue(0.02, 0.1, 0.01, 1.53),
    "chest": Tissue(0.35, 1.0, 0.8, 1.65),
    "blood": Tissue(0.02, 0.2, 0.18, 1.61),
    "myocardium": Tissue(0.35, 1.0, 0.9, 1.70),
    "pericardium": Tissue(1.0, 1.0, 0.9, 1.80),
    "valve": Tissue(0.9, 1.0, 0.9, 1.75),
    "skin": Tissue(1.1, 1.0, 1.0, 1.75),
    "fat": Tissue(0.22, 0.7, 0.6, 1.38),
    "gland": Tissue(0.75, 1.0, 0.75, 1.65),
    "ligament": Tissue(1.3, 1.0, 0.8, 1.75),
    "muscle": Tissue(0.4, 1.0, 1.0, 1.68),
    "lesion_benign": Tissue(0.06, 0.8, 0.25, 1.58),
    "lesion_malignant": Tissue(0.08, 0.5, 3.0, 1.68),
}

DOMAINS = ("fetal-head", "cardiac", "breast")
PATHOLOGIES = ("benign", "malignant", "normal")
# BUSI's class balance (437 benign, 210 malignant, 133 normal images).
PATHOLOGY_PROBABILITIES = (0.56, 0.27, 0.17)
HC_RANGE_MM = (50.0, 350.0)


@dataclass
class Scene:
    """Tissue layers, mask layers and the probe: everything needed to simulate one case."""

    geometry: ProbeGeometry
    tissue_names: list[str]
    layers: list[tuple[Shape, int]] = field(default_factory=list)
    mask_layers: list[tuple[Shape, int]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    spacing_mm: float | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def tissue(self, name: str) -> int:
        if name not in self.tissue_names:
            self.tissue_names.append(name)
        return self.tissue_names.index(name)

    def paint(self, shape: Shape, tissue: str) -> None:
        self.layers.append((shape, self.tissue(tissue)))

    def tissue_map(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros(x.shape, dtype=np.intp)
        for shape, value in self.layers:
            out[shape(x, y)] = value
        return out

    def mask(self, config: AcousticConfig | None = None) -> np.ndarray:
        """uint8 label map on the image grid; labels outside the field of view are dropped."""
        h, w = self.geometry.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        out = np.zeros((h, w), dtype=np.uint8)
        for shape, value in self.mask_layers:
            out[shape(xx, yy)] = value
        out[~fan_mask(self.geometry, config)] = 0
        return out


# -- shapes ---------------------------------------------------------------------------------------


def _rotated(x: np.ndarray, y: np.ndarray, cx: float, cy: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = x - cx, y - cy
    return dx * c + dy * s, -dx * s + dy * c


class Region:
    """A shape with an optional bounding box (x0, x1, y0, y1): points outside it are never tested."""

    def __init__(self, contains: Shape, bbox: tuple[float, float, float, float] | None = None):
        self.contains, self.bbox = contains, bbox

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.bbox is None:
            return self.contains(x, y)
        x0, x1, y0, y1 = self.bbox
        selected = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        out = np.zeros(x.shape, dtype=bool)
        if selected.any():
            out[selected] = self.contains(x[selected], y[selected])
        return out


def _box(cx: float, cy: float, reach: float) -> tuple[float, float, float, float]:
    return cx - reach, cx + reach, cy - reach, cy + reach


def ellipse(cx: float, cy: float, a: float, b: float, theta: float = 0.0) -> Region:
    """Filled ellipse, semi-axis a along direction theta (radians from +x, y down)."""

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = _rotated(x, y, cx, cy, theta)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0

    return Region(inside, _box(cx, cy, max(a, b) + 1))


def half_ellipse(cx: float, cy: float, a: float, b: float, theta: float) -> Region:
    """The half of an ellipse on the negative-u side (a bullet shape whose flat base is at the centre)."""

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = _rotated(x, y, cx, cy, theta)
        return ((u / a) ** 2 + (v / b) ** 2 <= 1.0) & (u <= 0)

    return Region(inside, _box(cx, cy, max(a, b) + 1))


def difference(outer: Shape, inner: Shape) -> Region:
    return Region(lambda x, y: outer(x, y) & ~inner(x, y), getattr(outer, "bbox", None))


def segment(x0: float, y0: float, x1: float, y1: float, half_width: float) -> Region:
    """A thick line segment (capsule)."""
    length2 = max((x1 - x0) ** 2 + (y1 - y0) ** 2, 1e-9)

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        t = np.clip(((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / length2, 0, 1)
        return (x - x0 - t * (x1 - x0)) ** 2 + (y - y0 - t * (y1 - y0)) ** 2 <= half_width**2

    pad = half_width + 1
    return Region(inside, (min(x0, x1) - pad, max(x0, x1) + pad, min(y0, y1) - pad, max(y0, y1) + pad))


def below_curve(depth: Callable[[np.ndarray], np.ndarray]) -> Shape:
    """Everything deeper than a curve y = depth(x)."""
    return lambda x, y: y >= depth(x)


def wavy_depth(
    base: float, amplitude: float, rng: np.random.Generator, width: float
) -> Callable[[np.ndarray], np.ndarray]:
    k1, k2 = rng.uniform(0.5, 2.0), rng.uniform(2.0, 5.0)
    p1, p2 = rng.uniform(0, 2 * math.pi, size=2)
    return lambda x: (
        base + amplitude * (np.sin(2 * math.pi * k1 * x / width + p1) + 0.5 * np.sin(2 * math.pi * k2 * x / width + p2))
    )


def star_blob(
    cx: float,
    cy: float,
    radius: float,
    harmonics: np.ndarray,
    phases: np.ndarray,
    spikes: list[tuple[float, float, float]],
    stretch: float,
    theta: float,
) -> Region:
    """Irregular blob: r(phi) = radius (1 + sum c_k cos(k phi + p_k) + spicules), then stretched.

    Each spike (angle, height, width) is a narrow Gaussian bump of the radius (a spicule).
    """

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = _rotated(x, y, cx, cy, theta)
        v = v / stretch
        phi = np.arctan2(v, u)
        r = np.ones_like(phi)
        for k, (c, p) in enumerate(zip(harmonics, phases, strict=True), start=2):
            r += c * np.cos(k * phi + p)
        for angle, height, width in spikes:
            d = (phi - angle + math.pi) % (2 * math.pi) - math.pi
            r += height * np.exp(-(d**2) / (2 * width**2))
        return np.hypot(u, v) <= radius * r

    reach = radius * (1 + float(np.sum(harmonics)) + max([h for _, h, _ in spikes], default=0.0)) * max(stretch, 1.0)
    return Region(inside, _box(cx, cy, reach + 1))


def _inside_view(points_x: np.ndarray, points_y: np.ndarray, geometry: ProbeGeometry, margin: float) -> bool:
    h, w = geometry.shape
    if (
        points_x.min() < margin
        or points_y.min() < margin
        or points_x.max() > w - 1 - margin
        or points_y.max() > h - 1 - margin
    ):
        return False
    if geometry.kind == "linear":
        return True
    dx, dy = points_x - (w / 2 - 0.5), points_y - geometry.apex_y
    r, theta = np.hypot(dx, dy), np.arctan2(dx, dy)
    half = math.radians(geometry.half_angle_deg)
    return bool(
        (r >= geometry.r_min + margin).all()
        and (r <= geometry.r_max - margin).all()
        and (np.abs(theta) <= half - margin / np.maximum(r, 1)).all()
    )


def _ellipse_outline(
    cx: float, cy: float, a: float, b: float, theta: float, n: int = 72
) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    u, v = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(theta), math.sin(theta)
    return cx + u * c - v * s, cy + u * s + v * c


def _jitter(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


# -- generators -----------------------------------------------------------------------------------


def fetal_head(height: int, width: int, rng: np.random.Generator, pixel_size_mm: float | None = None) -> Scene:
    """Transthalamic-like plane: bright elliptical skull (shadowing), hypoechoic brain, midline echo.

    The mask is the filled ellipse of the skull's outer border (the HC18 convention). Unless a pixel
    size is imposed, it is chosen per case so the head circumference falls uniformly in 50-350 mm.
    """
    short = min(height, width)
    # Probe layouts come from a small set, so the simulator's cached sampling grids are reused.
    half_angle = float(rng.choice([32.0, 36.0, 40.0]))
    apex_y = -float(rng.choice([0.4, 0.5, 0.6, 0.7])) * height
    target_hc = _jitter(rng, *HC_RANGE_MM)
    ratio = _jitter(rng, 0.74, 0.9)
    head_theta = _jitter(rng, -math.pi / 2, math.pi / 2)
    a_fraction = _jitter(rng, 0.24, 0.38)
    provisional = sector_geometry(
        height, width, half_angle_deg=half_angle, apex_y=apex_y, depth_cm=10.0, frequency_mhz=3.5
    )
    a = a_fraction * short
    if pixel_size_mm is not None:
        # Head size in pixels follows from the imposed pixel size, kept within what the view can hold.
        a_hc = target_hc / pixel_size_mm / (math.pi * (1 + ratio) * (1 + 3 * ((1 - ratio) / (1 + ratio)) ** 2 / 10))
        a = float(np.clip(a_hc, 0.12 * short, 0.4 * short))
    for _ in range(40):
        b = a * ratio
        cx = _jitter(rng, 0.3, 0.7) * width
        cy = _jitter(rng, 0.4, 0.65) * height
        ox, oy = _ellipse_outline(cx, cy, a, b, head_theta)
        if _inside_view(ox, oy, provisional, margin=2.0):
            break
        a *= 0.96
    else:
        cx, cy = width / 2, height * 0.55
        a = min(a, 0.3 * short)
        b = a * ratio
    circumference_px = (
        math.pi * (a + b) * (1 + 3 * ((a - b) / (a + b)) ** 2 / (10 + math.sqrt(4 - 3 * ((a - b) / (a + b)) ** 2)))
    )
    spacing = pixel_size_mm if pixel_size_mm is not None else target_hc / circumference_px
    depth_cm = (provisional.r_max - provisional.r_min) * spacing / 10
    geometry = sector_geometry(
        height, width, half_angle_deg=half_angle, apex_y=apex_y, depth_cm=depth_cm, frequency_mhz=3.5
    )

    scene = Scene(geometry, ["soft_tissue"], spacing_mm=spacing)
    wall = wavy_depth(_jitter(rng, 0.08, 0.2) * height, 0.03 * height, rng, width)
    scene.paint(lambda x, y: y <= wall(x), "abdominal_wall")
    # Amniotic fluid around the head, and a placenta on one side.
    fluid_scale = _jitter(rng, 1.25, 1.7)
    scene.paint(
        ellipse(
            cx + _jitter(rng, -0.1, 0.1) * a,
            cy,
            a * fluid_scale,
            a * fluid_scale * _jitter(rng, 0.7, 1.0),
            _jitter(rng, -0.5, 0.5),
        ),
        "amniotic_fluid",
    )
    if rng.random() < 0.6:
        side = rng.choice([-1, 1])
        scene.paint(
            ellipse(cx + side * a * 1.8, cy - a * _jitter(rng, 0.2, 1.0), a * 0.9, a * 0.5, _jitter(rng, -1, 1)),
            "placenta",
        )
        scene.paint(ellipse(cx, cy, a * 1.15, b * 1.15, head_theta), "amniotic_fluid")
    thickness = max(1.2, _jitter(rng, 0.045, 0.07) * b)
    outer = ellipse(cx, cy, a, b, head_theta)
    inner = ellipse(cx, cy, a - thickness, b - thickness, head_theta)
    scene.paint(outer, "skull")
    scene.paint(inner, "brain")
    c, s = math.cos(head_theta), math.sin(head_theta)
    reach = 0.85 * (a - thickness)
    scene.paint(segment(cx - reach * c, cy - reach * s, cx + reach * c, cy + reach * s, max(0.5, 0.012 * a)), "midline")
    csp_at = _jitter(rng, -0.35, -0.2) * a
    scene.paint(ellipse(cx + csp_at * c, cy + csp_at * s, 0.09 * a, 0.045 * a, head_theta), "csp")
    for side in (-1, 1):
        offset = 0.35 * b * side
        px, py = cx - offset * s + 0.3 * a * c, cy + offset * c + 0.3 * a * s
        scene.paint(ellipse(px, py, 0.14 * a, 0.07 * a, head_theta), "choroid_plexus")
    scene.mask_layers.append((outer, 1))
    scene.params = {
        "center_x": cx,
        "center_y": cy,
        "semi_major_px": a,
        "semi_minor_px": b,
        "angle_rad": head_theta,
        "skull_thickness_px": thickness,
        "target_hc_mm": target_hc,
        "half_angle_deg": half_angle,
        "apex_y": apex_y,
        "depth_cm": depth_cm,
    }
    return scene


def cardiac(height: int, width: int, rng: np.random.Generator, phase: str | None = None) -> Scene:
    """Apical four-chamber-like view from a phased array: LV (1), myocardium (2), left atrium (3).

    At end-systole the cavity is shorter and narrower, the wall thicker, the atrium fuller and the
    mitral leaflets closed; at end-diastole the leaflets are open.
    """
    phase = phase or str(rng.choice(["ED", "ES"]))
    half_angle = float(rng.integers(18, 23) * 2)
    depth_cm = _jitter(rng, 13, 17)
    geometry = sector_geometry(
        height, width, half_angle_deg=half_angle, apex_y=-0.02 * height, depth_cm=depth_cm, frequency_mhz=2.5
    )
    scale = min(height, width * 0.9)
    systole = phase == "ES"
    lv_length = _jitter(rng, 0.42, 0.52) * scale * (0.85 if systole else 1.0)
    lv_half_width = _jitter(rng, 0.085, 0.11) * scale * (0.75 if systole else 1.0)
    wall = _jitter(rng, 0.03, 0.045) * scale * (1.3 if systole else 1.0)
    la_length = _jitter(rng, 0.09, 0.13) * scale * (1.15 if systole else 1.0)
    la_half_width = lv_half_width * _jitter(rng, 0.8, 1.0) * (1.2 if systole else 1.0)
    tilt = _jitter(rng, -0.2, 0.2)  # radians from vertical
    apex_x = width / 2 + _jitter(rng, -0.04, 0.06) * width
    apex_y = _jitter(rng, 0.06, 0.12) * height
    total = lv_length + wall + 2 * la_length
    room = 0.93 * height - apex_y
    if total > room:  # shrink the heart to fit the depth
        k = room / total
        lv_length, lv_half_width, wall, la_length, la_half_width = (
            v * k for v in (lv_length, lv_half_width, wall, la_length, la_half_width)
        )
    axis = math.pi / 2 + tilt  # long axis direction (pointing down), radians from +x
    ux, uy = math.cos(axis), math.sin(axis)  # along the axis
    vx, vy = -uy, ux  # across, towards the image's left for small tilts

    def at(u: float, v: float) -> tuple[float, float]:
        return apex_x + u * ux + v * vx, apex_y + u * uy + v * vy

    base_x, base_y = at(lv_length + wall, 0.0)
    lv = half_ellipse(*at(lv_length + wall, 0.0), lv_length, lv_half_width, axis)
    myo = difference(half_ellipse(base_x, base_y, lv_length + wall, lv_half_width + wall, axis), lv)
    la_centre = at(lv_length + wall + la_length * 1.05, 0.0)
    la = ellipse(*la_centre, la_length, la_half_width, axis)
    rv_offset = lv_half_width + wall + lv_half_width * 0.75
    rv = half_ellipse(*at(lv_length + wall, rv_offset), lv_length * 0.8, lv_half_width * 0.8, axis)
    ra = ellipse(*at(lv_length + wall + la_length * 1.05, rv_offset), la_length * 0.95, la_half_width * 0.85, axis)

    scene = Scene(geometry, ["chest"])
    pericardium = half_ellipse(base_x, base_y, lv_length + 2 * wall, lv_half_width + rv_offset + 2 * wall, axis)
    scene.paint(pericardium, "pericardium")
    scene.paint(
        half_ellipse(base_x, base_y, lv_length + 1.4 * wall, lv_half_width + rv_offset + 1.4 * wall, axis), "myocardium"
    )
    scene.paint(rv, "blood")
    scene.paint(ra, "blood")
    scene.paint(myo, "myocardium")
    scene.paint(lv, "blood")
    scene.paint(la, "blood")
    # Mitral leaflets: along the axis when open (ED), across it when closed (ES).
    leaflet = 0.6 * lv_half_width
    for side in (-1, 1):
        hx, hy = at(lv_length + wall * 1.2, side * lv_half_width * 0.9)
        if systole:
            tx, ty = at(lv_length + wall * 1.2, side * (lv_half_width * 0.9 - leaflet))
        else:
            tx, ty = at(lv_length + wall * 1.2 - leaflet, side * lv_half_width * 0.8)
        scene.paint(segment(hx, hy, tx, ty, max(0.5, 0.01 * scale)), "valve")
    scene.mask_layers += [(myo, 2), (lv, 1), (la, 3)]
    scene.attributes = {"view": "4CH", "phase": phase}
    scene.params = {
        "apex_x": apex_x,
        "apex_y": apex_y,
        "tilt_rad": tilt,
        "lv_length_px": lv_length,
        "lv_half_width_px": lv_half_width,
        "wall_px": wall,
        "la_length_px": la_length,
        "la_half_width_px": la_half_width,
        "half_angle_deg": half_angle,
        "depth_cm": depth_cm,
    }
    return scene


def breast(height: int, width: int, rng: np.random.Generator, pathology: str | None = None) -> Scene:
    """Linear-probe breast: skin, fat with Cooper's ligaments, glandular layer, pectoral muscle.

    Benign lesions are smooth, wider-than-tall ovals with little attenuation (posterior
    enhancement); malignant ones are irregular and spiculated and attenuate strongly (shadowing);
    `normal` cases have no lesion and an empty mask.
    """
    if pathology is None:
        pathology = str(rng.choice(PATHOLOGIES, p=PATHOLOGY_PROBABILITIES))
    depth_cm = _jitter(rng, 3.0, 5.0)
    geometry = linear_geometry(height, width, depth_cm=depth_cm, frequency_mhz=10.0)
    scene = Scene(geometry, ["fat"])
    skin = _jitter(rng, 0.03, 0.05) * height
    fat_bottom = wavy_depth(_jitter(rng, 0.2, 0.32) * height, 0.04 * height, rng, width)
    gland_bottom = wavy_depth(_jitter(rng, 0.68, 0.8) * height, 0.04 * height, rng, width)
    muscle_top = wavy_depth(_jitter(rng, 0.82, 0.9) * height, 0.02 * height, rng, width)
    scene.paint(below_curve(fat_bottom), "gland")
    scene.paint(below_curve(gland_bottom), "fat")
    scene.paint(below_curve(muscle_top), "muscle")
    for _ in range(int(rng.integers(3, 7))):  # fat lobules inside the gland
        lx, ly = _jitter(rng, 0, 1) * width, _jitter(rng, 0.35, 0.7) * height
        scene.paint(
            ellipse(
                lx, ly, _jitter(rng, 0.04, 0.1) * width, _jitter(rng, 0.02, 0.05) * height, _jitter(rng, -0.3, 0.3)
            ),
            "fat",
        )
    for _ in range(int(rng.integers(2, 5))):  # Cooper's ligaments across the fat
        x0 = _jitter(rng, 0, 1) * width
        scene.paint(
            segment(
                x0,
                skin,
                x0 + _jitter(rng, -0.2, 0.2) * width,
                float(fat_bottom(np.array(x0))),
                max(0.5, 0.006 * height),
            ),
            "ligament",
        )
    for k in range(int(rng.integers(3, 6))):  # muscle striations
        y0 = float(muscle_top(np.array(0.0))) + (k + 1) * 0.025 * height
        scene.paint(
            segment(0, y0, width, y0 + _jitter(rng, -0.05, 0.05) * height, max(0.5, 0.005 * height)), "ligament"
        )
    scene.paint(lambda x, y: y <= skin, "skin")

    params: dict[str, Any] = {"depth_cm": depth_cm, "skin_px": skin}
    if pathology != "normal":
        short = min(height, width)
        radius = _jitter(rng, 0.07, 0.15) * short
        cx = _jitter(rng, 0.25, 0.75) * width
        cy = _jitter(rng, 0.35, 0.55) * height
        theta = _jitter(rng, -0.25, 0.25)
        if pathology == "benign":
            stretch = _jitter(rng, 0.55, 0.8)  # wider than tall
            shape = star_blob(
                cx,
                cy,
                radius * 1.25,
                rng.uniform(0, 0.03, size=2),
                rng.uniform(0, 2 * math.pi, size=2),
                [],
                stretch,
                theta,
            )
            params.update(lesion_harmonics=0.0, spicules=0)
            tissue = "lesion_benign"
        else:
            stretch = _jitter(rng, 0.85, 1.4)  # can be taller than wide
            harmonics = rng.uniform(0.03, 0.12, size=5)
            n_spikes = int(rng.integers(4, 10))
            spikes = [
                (float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(0.25, 0.6)), float(rng.uniform(0.04, 0.09)))
                for _ in range(n_spikes)
            ]
            shape = star_blob(cx, cy, radius, harmonics, rng.uniform(0, 2 * math.pi, size=5), spikes, stretch, theta)
            params.update(lesion_harmonics=float(harmonics.sum()), spicules=n_spikes)
            tissue = "lesion_malignant"
        scene.paint(shape, tissue)
        scene.mask_layers.append((shape, 1))
        params.update(lesion_x=cx, lesion_y=cy, lesion_radius_px=radius, lesion_stretch=stretch, lesion_angle_rad=theta)
    scene.attributes = {"pathology": pathology}
    scene.params = params
    return scene


GENERATORS = {"fetal-head": fetal_head, "cardiac": cardiac, "breast": breast}
