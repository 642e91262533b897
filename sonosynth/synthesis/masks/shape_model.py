"""A statistical shape model of label maps: PCA on signed-distance maps in a normalised frame.

Each training mask is brought to a canonical frame (foreground centred, scaled to a fixed size,
optionally rotated to its principal axis); the signed-distance maps of all foreground labels are
stacked so one PCA learns how structures vary together (e.g. myocardium thickness with cavity
size). Sampling draws PCA coefficients from the learnt Gaussian (truncated) and a pose (position,
size, rotation, pixel size) from a training mask, renders the label map, repairs it and checks it
against the anatomy rules the training masks share. For one-structure anatomy such as the fetal
head, `target_hc_mm` rescales the sampled shape so its circumference (ellipse fit x pixel size)
hits a requested value: a way to fill gaps in gestational age.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy import ndimage

from sonosynth.data.ellipse import head_circumference_mm
from sonosynth.errors import DataError, SonosynthError
from sonosynth.files import writing
from sonosynth.settings import Config
from sonosynth.synthesis.masks.topology import AnatomyRules, enforce_topology

WEIGHTS_FILE = "shape_model.safetensors"
CONFIG_FILE = "shape_model.json"


@dataclass
class ShapeModelConfig(Config):
    """`grid`: side of the canonical frame; `extent`: sqrt(foreground area) there, as a fraction of the
    grid; `variance_kept`/`max_modes`: how many PCA modes; `clip_sd`: coefficients are truncated to
    +-clip_sd standard deviations (beyond that shapes stop looking like training anatomy); `size_widen`: a new
    shape's size is drawn uniformly over the training masks' size range widened by this fraction at both ends
    (0.25: 0.75 x the smallest to 1.25 x the largest), instead of a training mask's own size (0), so new masks
    reach structure sizes the training masks lack (the generic form of `GenerateConfig.hc_widen`)."""

    what: ClassVar[str] = "shape model"

    grid: int = 64
    extent: float = 0.3
    align_rotation: bool = True
    variance_kept: float = 0.95
    max_modes: int = 20
    clip_sd: float = 2.0
    pose_jitter: float = 0.02
    max_tries: int = 20
    size_widen: float = 0.0

    def __post_init__(self) -> None:
        if self.size_widen < 0:
            raise SonosynthError(f"shape model: size_widen must not be negative, got {self.size_widen}")


@dataclass
class Pose:
    """Where a canonical shape sits in an image: centre (fractions of height/width), size
    (sqrt of foreground area as a fraction of sqrt(height*width)), rotation, pixel size."""

    cy: float
    cx: float
    size: float
    angle: float
    spacing_mm: float | None = None


@dataclass
class SampledShape:
    mask: np.ndarray
    spacing_mm: float | None
    coefficients: np.ndarray
    pose: Pose
    attempts: int = 1
    fell_back: bool = False
    notes: list[str] = field(default_factory=list)


def signed_distance(region: np.ndarray) -> np.ndarray:
    """Negative inside, positive outside, in pixels (zero-crossing halfway across the boundary)."""
    region = np.asarray(region, dtype=bool)
    if not region.any():
        return np.full(region.shape, float(max(region.shape)), dtype=np.float32)
    inside = ndimage.distance_transform_edt(region)
    outside = ndimage.distance_transform_edt(~region)
    return (outside - inside + np.where(region, 0.5, -0.5)).astype(np.float32)


def measure_pose(mask: np.ndarray, align_rotation: bool, spacing_mm: float | None = None) -> Pose:
    """Centroid, size and principal-axis angle of the foreground (the 180-degree ambiguity of
    the axis is resolved by the sign of the third moment, so asymmetric anatomy keeps its way up)."""
    h, w = mask.shape
    fg = np.argwhere(mask > 0).astype(np.float64)
    if len(fg) == 0:
        raise DataError("empty mask: no foreground to learn a shape from")
    cy, cx = fg.mean(axis=0)
    angle = 0.0
    if align_rotation and len(fg) > 2:
        dy, dx = fg[:, 0] - cy, fg[:, 1] - cx
        angle = 0.5 * math.atan2(2 * (dx * dy).mean(), (dx * dx).mean() - (dy * dy).mean())
        along = dx * math.cos(angle) + dy * math.sin(angle)
        if (along**3).mean() < 0:
            angle += math.pi
    return Pose(cy / h, cx / w, math.sqrt(len(fg) / (h * w)), angle, spacing_mm)


def _image_to_canonical(pose: Pose, shape: tuple[int, int], grid: int, extent: float):
    """Pixels per canonical unit and a function mapping canonical (row, col) grids to image coords."""
    h, w = shape
    pixels_per_unit = pose.size * math.sqrt(h * w) / (extent * grid)
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    centre = (grid - 1) / 2

    def to_image(u_row: np.ndarray, u_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # canonical col axis = principal axis (x), canonical row axis = minor axis (y)
        du, dv = (u_col - centre) * pixels_per_unit, (u_row - centre) * pixels_per_unit
        return pose.cy * h + du * s + dv * c, pose.cx * w + du * c - dv * s

    def to_canonical(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dy, dx = rows - pose.cy * h, cols - pose.cx * w
        du, dv = dx * c + dy * s, -dx * s + dy * c
        return dv / pixels_per_unit + centre, du / pixels_per_unit + centre

    return pixels_per_unit, to_image, to_canonical


class ShapeModel:
    """PCA shape model over the foreground labels of a set of masks (see module docstring)."""

    def __init__(self, config: ShapeModelConfig, labels: list[int], mean: np.ndarray, components: np.ndarray,
                 stdevs: np.ndarray, poses: list[Pose], canvas: tuple[int, int], rules: AnatomyRules):
        self.config = config
        self.labels = labels
        self.mean = mean  # (L, G, G) mean signed distance, canonical units
        self.components = components  # (M, L, G, G) orthonormal modes
        self.stdevs = stdevs  # (M,)
        self.poses = poses
        self.canvas = canvas
        self.rules = rules

    @property
    def num_modes(self) -> int:
        return len(self.stdevs)

    # ---- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(cls, masks: Sequence[np.ndarray], spacing: float | Sequence[float | None] | None = None,
            config: ShapeModelConfig | None = None) -> ShapeModel:
        """Learn from label maps (any sizes); `spacing` is one pixel size (mm) or one per mask."""
        config = config or ShapeModelConfig()
        masks = [np.asarray(m).astype(np.uint8) for m in masks]
        if len(masks) < 2:
            raise DataError(f"a shape model needs at least 2 masks, got {len(masks)}")
        spacings = list(spacing) if isinstance(spacing, Sequence) else [spacing] * len(masks)
        if len(spacings) != len(masks):
            raise DataError(f"{len(spacings)} pixel sizes for {len(masks)} masks")
        labels = sorted({int(v) for m in masks for v in np.unique(m) if v != 0})
        if not labels:
            raise DataError("all masks are empty: no shape to learn")
        grid = config.grid
        vectors, poses = [], []
        # Distances are computed in a 2x supersampled canonical frame: cheap whatever the image size.
        fine = np.mgrid[0 : 2 * grid, 0 : 2 * grid].astype(np.float64) / 2.0 - 0.25
        for m, sp in zip(masks, spacings, strict=True):
            if not (m > 0).any():
                continue
            pose = measure_pose(m, config.align_rotation, None if sp is None else float(sp))
            _, to_image, _ = _image_to_canonical(pose, m.shape, grid, config.extent)
            rows, cols = to_image(fine[0], fine[1])
            sdms = []
            for v in labels:
                inside = ndimage.map_coordinates((m == v).astype(np.float32), [rows, cols], order=1, mode="constant")
                fine_sdm = signed_distance(inside >= 0.5) / 2.0
                sdms.append(fine_sdm.reshape(grid, 2, grid, 2).mean(axis=(1, 3)))
            vectors.append(np.stack(sdms).ravel())
            poses.append(pose)
        data = np.stack(vectors).astype(np.float64)
        mean = data.mean(axis=0)
        _, singular, vt = np.linalg.svd(data - mean, full_matrices=False)
        variance = singular**2 / max(1, len(data) - 1)
        total = variance.sum()
        keep = 0
        if total > 0:
            keep = int(np.searchsorted(np.cumsum(variance) / total, config.variance_kept) + 1)
        keep = min(keep, config.max_modes, len(variance))
        rules = AnatomyRules.consensus([AnatomyRules.of(m) for m in masks if (m > 0).any()])
        canvas = Counter(m.shape for m in masks).most_common(1)[0][0]
        shape = (len(labels), grid, grid)
        return cls(config, labels, mean.reshape(shape).astype(np.float32),
                   vt[:keep].reshape((keep, *shape)).astype(np.float32),
                   np.sqrt(variance[:keep]).astype(np.float32), poses, tuple(int(s) for s in canvas), rules)

    # ---- sampling --------------------------------------------------------------------------
    def render(self, coefficients: np.ndarray, pose: Pose, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The label map of a shape (PCA coefficients) placed at `pose` on a canvas of `shape`."""
        shape = tuple(shape or self.canvas)
        sdm = self.mean + np.tensordot(np.asarray(coefficients, dtype=np.float32), self.components, axes=1)
        _, _, to_canonical = _image_to_canonical(pose, shape, self.config.grid, self.config.extent)
        rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
        u_rows, u_cols = to_canonical(rows, cols)
        per_label = np.stack([
            ndimage.map_coordinates(s, [u_rows, u_cols], order=1, mode="constant", cval=float(self.config.grid))
            for s in sdm
        ])
        winner = np.argmin(per_label, axis=0)
        out = np.where(per_label.min(axis=0) < 0, np.asarray(self.labels)[winner], 0)
        return out.astype(np.uint8)

    def sample(self, rng: np.random.Generator, target_hc_mm: float | None = None,
               shape: tuple[int, int] | None = None, spacing_mm: float | None = None) -> SampledShape:
        """A new plausible mask. With `target_hc_mm`, the foreground's fitted-ellipse circumference
        times the pixel size is rescaled to that value (pose and pixel size are taken from a
        training mask of similar circumference, so the head fills the image as real scans do)."""
        shape = tuple(shape or self.canvas)
        notes: list[str] = []
        for attempt in range(1, self.config.max_tries + 1):
            coefficients = np.clip(rng.standard_normal(self.num_modes), -self.config.clip_sd, self.config.clip_sd)
            coefficients = (coefficients * self.stdevs).astype(np.float32)
            pose = self._draw_pose(rng, target_hc_mm, spacing_mm)
            mask = enforce_topology(self.render(coefficients, pose, shape), self.rules)
            if target_hc_mm is not None:
                mask, pose = self._fit_circumference(mask, coefficients, pose, shape, target_hc_mm)
                if mask is None:
                    notes.append("circumference could not be measured")
                    continue
            problems = self.rules.violations(mask)
            if not problems:
                return SampledShape(mask, pose.spacing_mm, coefficients, pose, attempt, False, notes)
            notes.append("; ".join(problems))
        if target_hc_mm is not None:
            raise SonosynthError(
                f"no plausible shape with head circumference {target_hc_mm:g} mm after {self.config.max_tries} "
                f"draws (last problem: {notes[-1] if notes else 'unknown'}); is the target within the "
                f"range the image and pixel size allow?"
            )
        coefficients = np.zeros(self.num_modes, dtype=np.float32)
        pose = self._draw_pose(rng, None, spacing_mm)
        mask = enforce_topology(self.render(coefficients, pose, shape), self.rules)
        return SampledShape(mask, pose.spacing_mm, coefficients, pose, self.config.max_tries, True, notes)

    def _draw_pose(self, rng: np.random.Generator, target_hc_mm: float | None, spacing_mm: float | None) -> Pose:
        candidates = self.poses
        if target_hc_mm is not None and all(p.spacing_mm for p in self.poses):
            # Prefer poses of training heads of similar physical size: pixel size in real scans grows
            # with gestational age (the sonographer zooms out), so this keeps the head's share of the image.
            # Circumference of a disc of the pose's area is enough to rank them.
            side = math.sqrt(self.canvas[0] * self.canvas[1])
            rough_hc = np.array([2 * math.sqrt(math.pi) * p.size * side * p.spacing_mm for p in self.poses])
            order = np.argsort(np.abs(np.log(rough_hc / target_hc_mm)))
            candidates = [self.poses[i] for i in order[:5]]
        base = candidates[int(rng.integers(len(candidates)))]
        jitter = self.config.pose_jitter
        size = base.size
        if self.config.size_widen and target_hc_mm is None:
            sizes = [p.size for p in self.poses]
            size = rng.uniform(min(sizes) * (1 - self.config.size_widen), max(sizes) * (1 + self.config.size_widen))
        return Pose(
            cy=float(np.clip(base.cy + rng.normal(0, jitter), 0.05, 0.95)),
            cx=float(np.clip(base.cx + rng.normal(0, jitter), 0.05, 0.95)),
            size=float(size * math.exp(rng.normal(0, jitter))),
            angle=float(base.angle + rng.normal(0, jitter * math.pi)),
            spacing_mm=spacing_mm if spacing_mm is not None else base.spacing_mm,
        )

    def _fit_circumference(self, mask: np.ndarray, coefficients: np.ndarray, pose: Pose,
                           shape: tuple[int, int], target_hc_mm: float) -> tuple[np.ndarray | None, Pose]:
        """Hit the target circumference by resizing the shape at the pose's pixel size; if the resized
        head no longer fits the image, keep its size in pixels and change the pixel size instead
        (what a sonographer does for a large head: zoom out)."""
        spacing = pose.spacing_mm
        if spacing is None:
            raise SonosynthError("target head circumference needs a pixel size: the training masks have none, "
                                 "pass spacing_mm")
        resized, resized_pose = mask, pose
        for _ in range(4):
            hc = head_circumference_mm(resized > 0, spacing)
            if hc is None or hc <= 0:
                return None, pose
            if abs(hc - target_hc_mm) <= 0.005 * target_hc_mm:
                break
            resized_pose = Pose(pose.cy, pose.cx, resized_pose.size * target_hc_mm / hc, pose.angle, spacing)
            resized = enforce_topology(self.render(coefficients, resized_pose, shape), self.rules)
        if not self.rules.violations(resized):
            return resized, resized_pose
        hc_pixels = head_circumference_mm(mask > 0, 1.0)
        if hc_pixels is None or hc_pixels <= 0:
            return None, pose
        return mask, Pose(pose.cy, pose.cx, pose.size, pose.angle, target_hc_mm / hc_pixels)

    # ---- persistence ------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Weights as safetensors, everything else as JSON, in `folder`."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with writing(folder / WEIGHTS_FILE):
            save_file({"mean": self.mean, "components": self.components, "stdevs": self.stdevs},
                      str(folder / WEIGHTS_FILE))
        meta = {
            "config": asdict(self.config),
            "labels": self.labels,
            "canvas": list(self.canvas),
            "poses": [asdict(p) for p in self.poses],
            "rules": self.rules.to_dict(),
        }
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ShapeModel:
        from safetensors.numpy import load_file

        folder = Path(folder)
        for required in (folder / WEIGHTS_FILE, folder / CONFIG_FILE):
            if not required.is_file():
                raise DataError(f"{required}: missing; not a saved shape model")
        try:
            meta = json.loads((folder / CONFIG_FILE).read_text())
            weights = load_file(str(folder / WEIGHTS_FILE))
            return cls(ShapeModelConfig(**meta["config"]), [int(v) for v in meta["labels"]], weights["mean"],
                       weights["components"], weights["stdevs"], [Pose(**p) for p in meta["poses"]],
                       tuple(meta["canvas"]), AnatomyRules.from_dict(meta["rules"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{folder}: corrupt shape model ({exc})") from None
