"""The one augmentation pipeline: MONAI dictionary transforms, seeded per item, with named presets.

The generator's training stream, the segmenter's light augmentation and the strong classical
baseline are the same pipeline with different ranges (`AugmentConfig.preset`):

- `gentle` (generator training): with probability 0.8 a small rotation / zoom / shift, an overall
  gain, a depth-dependent gain (like a time-gain-compensation knob) and a gamma change; gentle
  because ultrasound appearance is tied to geometry (probe at the top, attenuation with depth);
- `light` (segmenter default): a larger affine, gain and gamma on every item;
- `classical` (the `+classical` arms, the baseline users would pick instead): affine, elastic,
  bias field, gamma, histogram shift, Rician noise, blur and shadow-like dropout;
- `none`: nothing.

Geometry moves the image (bilinear) and its masks (label map, field of view: nearest) together, with
zero padding; intensity changes touch the image only, on [0, 1] brightness so black stays black:

- depth gain: `RandDepthGaind` (`sonosynth/depth_gain.py`, the only transform written here: MONAI
  has no gain that changes with depth only); bias field: `RandBiasFieldd` (a smooth gain in both directions);
- speckle-like noise: MONAI has no multiplicative noise. `RandRicianNoised` is the closest
  well-kept option (the Rician distribution is that of an envelope-detected echo); its one
  departure from speckle, noise on black pixels, is removed by masking the noise to the pixels that
  carried signal before (`CopyItemsd` + `MaskIntensityd`);
- acoustic shadows: `RandCoarseDropoutd`, tall narrow black boxes on the image only (the anatomy
  under a shadow is still there, so the mask keeps it).

Every transform draws from one shared `RandomState`, reseeded from the item's own seed, so an
item's augmentation depends on its seed only (not on what came before): a resumed run draws exactly
the same augmentations. The transforms of the gentle and light presets (affine, flip, depth gain, gain,
gamma) also exist as `BatchedTransforms`: the same transforms and distributions (tests compare them with
the MONAI pipeline's), parameters drawn per item from the item's seed, tensors transformed once per batch;
`Augmentation` takes that path whenever a config uses nothing else (benchmarks/bench_augment.py: 8-14x
faster at 64 px). Sizes are fractions of the image side, so a config means the same at 64 and
at 256 px; blur is in pixels at the training size.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from sonosynth.errors import SonosynthError
from sonosynth.settings import Config, read_yaml_mapping

if TYPE_CHECKING:
    from monai.transforms import Transform

Pair = tuple[float, float]

# Allowed values per setting (inclusive), for both ends of a range; *_prob settings lie in [0, 1].
_BOUNDS: dict[str, tuple[float, float]] = {
    "probability": (0.0, 1.0),
    "rotate_deg": (-180.0, 180.0),
    "scale": (0.1, 10.0),
    "translate": (-1.0, 1.0),
    "shear": (-1.0, 1.0),
    "elastic_spacing": (0.01, 1.0),
    "elastic_magnitude": (0.0, 0.5),
    "gain": (0.1, 10.0),
    "depth_gain": (-1.0, 1.0),
    "bias_field_coeff": (-1.0, 1.0),
    "bias_field_degree": (1, 10),
    "contrast_gamma": (0.05, 20.0),
    "histogram_shift_points": (3, 100),
    "noise_std": (0.0, 1.0),
    "blur_sigma": (0.0, 10.0),
    "dropout_holes": (1, 100),
    "dropout_height": (0.01, 1.0),
    "dropout_width": (0.01, 1.0),
}
_INTEGERS = {"bias_field_degree", "histogram_shift_points", "dropout_holes"}
# The generator's former hand-written augmentation (in RUN/config.yaml of runs saved before the MONAI one).
_LEGACY_GENTLE_KEYS = {"enabled", "gamma", "hflip"}


@dataclass
class AugmentConfig(Config):
    """Ranges (low, high) and the probability that each transform is applied to an item.

    Every transform is off (probability 0) unless set: a YAML section names what it turns on, or
    starts from a preset with `preset: gentle|light|classical` and changes some of its values.
    """

    what: ClassVar[str] = "augmentation"

    probability: float = 1.0  # chance that an item is augmented at all
    # geometry, image and masks together
    affine_prob: float = 0.0
    rotate_deg: Pair = (-20.0, 20.0)
    scale: Pair = (0.8, 1.2)  # zoom of the content (> 1 enlarges)
    translate: Pair = (-0.1, 0.1)  # fraction of the side, each axis
    shear: Pair = (-0.1, 0.1)  # shear factor, each axis
    elastic_prob: float = 0.0
    elastic_spacing: float = 0.25  # distance between control points, fraction of the side
    elastic_magnitude: Pair = (0.01, 0.03)  # std of the control-point offsets, fraction of the side
    flip_prob: float = 0.0  # left-right flip (breaks the anatomy's handedness)
    # intensity, image only
    gain_prob: float = 0.0
    gain: Pair = (0.8, 1.25)  # overall brightness factor
    depth_gain_prob: float = 0.0
    depth_gain: Pair = (-0.15, 0.15)  # gain change from the top to the bottom of the image
    bias_field_prob: float = 0.0
    bias_field_coeff: Pair = (-0.15, 0.15)  # Legendre coefficients of the log gain
    bias_field_degree: int = 3
    contrast_prob: float = 0.0
    contrast_gamma: Pair = (0.6, 1.7)
    histogram_shift_prob: float = 0.0
    histogram_shift_points: tuple[int, int] = (5, 10)
    noise_prob: float = 0.0
    noise_std: float = 0.08  # Rician noise std drawn from [0, noise_std], image in [0, 1]
    blur_prob: float = 0.0
    blur_sigma: Pair = (0.25, 1.0)  # pixels at the training size
    dropout_prob: float = 0.0
    dropout_holes: tuple[int, int] = (1, 3)
    dropout_height: Pair = (0.2, 0.6)  # fraction of the side (depth direction)
    dropout_width: Pair = (0.03, 0.1)  # fraction of the side (lateral direction)

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = tuple(value)
                setattr(self, f.name, value)
            problems += _check(f.name, value, isinstance(f.default, tuple))
        if problems:
            raise SonosynthError("invalid augmentation: " + "; ".join(problems))

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        if name not in PRESETS:
            raise SonosynthError(f"unknown augmentation preset '{name}' (choose from {', '.join(PRESETS)})")
        return cls(**PRESETS[name])

    @classmethod
    def preset_file(cls, name: str, path: str | Path | None) -> AugmentConfig:
        """Preset `name`, with the values a YAML file at `path` changes (None: the preset as it is)."""
        if path is None:
            return cls.preset(name)
        return cls.from_dict({"preset": name, **read_yaml_mapping(path, cls.what)}, origin=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, origin: str | None = None) -> AugmentConfig:
        """Strict, like every config; `preset: NAME` starts from a preset's values."""
        data = dict(data or {})
        if _LEGACY_GENTLE_KEYS & set(data) or isinstance(data.get("rotate_deg"), int | float):
            data = _from_legacy_gentle(data)
        name = data.pop("preset", None)
        if name is not None:
            data = {**cls.preset(str(name)).to_dict(), **data}
        return super().from_dict(data, origin)

    @property
    def active(self) -> bool:
        """Whether anything can change an item."""
        return self.probability > 0 and any(getattr(self, f.name) > 0 for f in fields(self) if f.name.endswith("_prob"))


PRESETS: dict[str, dict[str, Any]] = {
    "none": {"probability": 0.0},
    "gentle": {
        "probability": 0.8, "affine_prob": 1.0, "rotate_deg": (-5.0, 5.0), "scale": (0.95, 1.05),
        "translate": (-0.03, 0.03), "shear": (0.0, 0.0), "gain_prob": 1.0, "gain": (0.85, 1.15),
        "depth_gain_prob": 1.0, "depth_gain": (-0.15, 0.15), "contrast_prob": 1.0,
        "contrast_gamma": (math.exp(-0.15), math.exp(0.15)),
    },
    "light": {
        "affine_prob": 1.0, "rotate_deg": (-10.0, 10.0), "scale": (0.9, 1.1), "translate": (-0.05, 0.05),
        "shear": (0.0, 0.0), "gain_prob": 1.0, "gain": (0.8, 1.25), "contrast_prob": 1.0,
        "contrast_gamma": (0.7, 1.4),
    },
    "classical": {
        "affine_prob": 0.9, "elastic_prob": 0.3, "bias_field_prob": 0.5, "contrast_prob": 0.5,
        "histogram_shift_prob": 0.3, "noise_prob": 0.5, "blur_prob": 0.3, "dropout_prob": 0.3,
    },
}


def _from_legacy_gentle(data: dict[str, Any]) -> dict[str, Any]:
    """The scalar magnitudes of the generator's former augmentation, as ranges of this pipeline."""
    old = {"enabled": True, "probability": 0.8, "rotate_deg": 5.0, "scale": 0.05, "translate": 0.03, "gain": 0.15,
           "depth_gain": 0.15, "gamma": 0.15, "hflip": 0.0, **data}
    if not old.pop("enabled"):
        return {"probability": 0.0}
    try:
        r, s, t, g, d, gamma = (float(old[k]) for k in ("rotate_deg", "scale", "translate", "gain", "depth_gain",
                                                        "gamma"))
    except (TypeError, ValueError) as exc:
        raise SonosynthError(f"augmentation: {exc}") from None
    unknown = sorted(set(old) - {"probability", "rotate_deg", "scale", "translate", "gain", "depth_gain", "gamma",
                                 "hflip"})
    return {
        **{k: old[k] for k in unknown},  # refused by the strict constructor, with their names
        "probability": old["probability"], "affine_prob": 1.0, "rotate_deg": (-r, r), "scale": (1 - s, 1 + s),
        "translate": (-t, t), "shear": (0.0, 0.0), "flip_prob": old["hflip"], "gain_prob": 1.0,
        "gain": (1 - g, 1 + g), "depth_gain_prob": 1.0, "depth_gain": (-d, d), "contrast_prob": 1.0,
        "contrast_gamma": (math.exp(-gamma), math.exp(gamma)),
    }


def _is_number(value: Any, integer: bool) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)


def _check(name: str, value: Any, is_range: bool) -> list[str]:
    """Problems with one setting: its type, order (ranges) and bounds."""
    integer = name in _INTEGERS
    kind = "integers" if integer else "numbers"
    low, high = (0.0, 1.0) if name.endswith("_prob") else _BOUNDS[name]
    if is_range:
        if not (isinstance(value, tuple) and len(value) == 2 and all(_is_number(v, integer) for v in value)):
            return [f"{name} must be a pair of {kind} [low, high], got {value!r}"]
        if value[0] > value[1]:
            return [f"{name} must be ordered (low <= high), got {list(value)}"]
        values = value
    else:
        if not _is_number(value, integer):
            return [f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}"]
        values = (value,)
    if any(not low <= v <= high for v in values):
        return [f"{name} must lie within [{low}, {high}], got {list(value) if is_range else value}"]
    return []


def build_transform(config: AugmentConfig, size: int) -> Transform:
    """The MONAI `Compose` over {"image", "masks"} items: image (1, size, size) in [0, 1], masks (C, size, size)."""
    from monai.transforms import (
        Compose,
        CopyItemsd,
        Identityd,
        MaskIntensityd,
        OneOf,
        Rand2DElasticd,
        RandAdjustContrastd,
        RandAffined,
        RandBiasFieldd,
        RandCoarseDropoutd,
        RandFlipd,
        RandGaussianSmoothd,
        RandHistogramShiftd,
        RandRicianNoised,
        RandScaleIntensityd,
    )

    from sonosynth.depth_gain import RandDepthGaind

    both, image = ("image", "masks"), "image"
    spatial = {"keys": both, "mode": ("bilinear", "nearest"), "padding_mode": "zeros", "spatial_size": (size, size)}
    # MONAI scales the sampling grid, so content zoom z is grid factor 1 / z, given as an offset from 1.
    grid_scale = (1.0 / config.scale[1] - 1.0, 1.0 / config.scale[0] - 1.0)
    translate = tuple(t * size for t in config.translate)

    def pixels(fraction: float) -> int:
        return max(1, round(fraction * size))

    affine = {
        "rotate_range": (tuple(math.radians(a) for a in config.rotate_deg),),
        "scale_range": (grid_scale, grid_scale),
        "translate_range": (translate, translate),
        "shear_range": (config.shear, config.shear),
    }
    elastic = {
        "spacing": (pixels(config.elastic_spacing),) * 2,
        "magnitude_range": tuple(m * size for m in config.elastic_magnitude),
    }
    # Affine and elastic are drawn independently but run as one of four branches: an item that gets
    # both is resampled once (Rand2DElasticd warps its control grid by the affine) and an item that
    # gets neither is not resampled at all (a skipped MONAI spatial transform still resamples).
    pa, pe = config.affine_prob, config.elastic_prob
    branches = [
        (pa * pe, lambda: Rand2DElasticd(prob=1.0, **elastic, **affine, **spatial)),
        (pa * (1 - pe), lambda: RandAffined(prob=1.0, cache_grid=True, **affine, **spatial)),
        ((1 - pa) * pe, lambda: Rand2DElasticd(prob=1.0, **elastic, **spatial)),
        ((1 - pa) * (1 - pe), lambda: Identityd(keys=both)),
    ]
    used = [(weight, make()) for weight, make in branches if weight > 0]
    transforms: list[Any] = []
    if len(used) > 1:
        transforms.append(OneOf([t for _, t in used], weights=[w for w, _ in used]))
    elif not isinstance(used[0][1], Identityd):
        transforms.append(used[0][1])
    optional = [
        (config.flip_prob, lambda p: RandFlipd(keys=both, prob=p, spatial_axis=1)),
        (config.noise_prob, lambda p: CopyItemsd(keys=image, names="signal")),  # non-black before noise
        (config.bias_field_prob, lambda p: RandBiasFieldd(keys=image, prob=p, degree=config.bias_field_degree,
                                                          coeff_range=config.bias_field_coeff)),
        (config.depth_gain_prob, lambda p: RandDepthGaind(keys=image, prob=p, gain_range=config.depth_gain)),
        (config.gain_prob, lambda p: RandScaleIntensityd(keys=image, prob=p,
                                                         factors=(config.gain[0] - 1, config.gain[1] - 1))),
        (config.contrast_prob, lambda p: RandAdjustContrastd(keys=image, prob=p, gamma=config.contrast_gamma)),
        (config.histogram_shift_prob, lambda p: RandHistogramShiftd(
            keys=image, prob=p, num_control_points=config.histogram_shift_points)),
        (config.noise_prob, lambda p: RandRicianNoised(keys=image, prob=p, std=config.noise_std, sample_std=True)),
        (config.noise_prob, lambda p: MaskIntensityd(keys=image, mask_key="signal")),
        (config.blur_prob, lambda p: RandGaussianSmoothd(keys=image, prob=p, sigma_x=config.blur_sigma,
                                                         sigma_y=config.blur_sigma)),
        (config.dropout_prob, lambda p: RandCoarseDropoutd(
            keys=image, prob=p, holes=config.dropout_holes[0], max_holes=config.dropout_holes[1],
            spatial_size=(pixels(config.dropout_height[0]), pixels(config.dropout_width[0])),
            max_spatial_size=(pixels(config.dropout_height[1]), pixels(config.dropout_width[1])), fill_value=0.0)),
    ]
    transforms += [make(p) for p, make in optional if p > 0]
    if config.probability < 1:
        return OneOf([Compose(transforms), Identityd(keys=both)], weights=[config.probability, 1 - config.probability])
    return Compose(transforms)


class Augmentation:
    """`config`'s pipeline at one image size; `augmentation(image, masks, seed)` augments one item."""

    def __init__(self, config: AugmentConfig, size: int, batched: bool = True):
        self.config, self.size = config, size
        # The presets every generator and U-Net pays for (gentle, light) run as batched torch code; the classical
        # transforms through MONAI, item by item (`batched=False`: MONAI for everything, to compare).
        self.batched = BatchedTransforms(config, size) if batched and config.active and batchable(config) else None
        self.transform = build_transform(config, size) if config.active and self.batched is None else None
        self._state = np.random.RandomState(0)
        if self.transform is not None:
            _share_state(self.transform, self._state)

    def __call__(self, image: torch.Tensor, masks: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """image (1, S, S) in [-1, 1] and masks (C, S, S) (label maps, field of view) in; the same out.

        Masks move with the image (nearest, zero padding) and keep their dtype; the image is clipped
        into [-1, 1]. The result depends on `seed` only.
        """
        if self.batched is not None:
            images, moved = self.batched(image[None], masks[None], [seed])
            return images[0], moved[0]
        if self.transform is None:
            return image, masks
        from monai.data import get_track_meta, set_track_meta
        from monai.utils import convert_to_tensor

        self._state.seed(seed % 2**32)
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors: MONAI's metadata bookkeeping would double the cost
        try:
            item = self.transform({"image": (image + 1) / 2, "masks": masks.float()})
        finally:
            set_track_meta(tracking)
        unit = convert_to_tensor(item["image"], dtype=image.dtype, track_meta=False).clamp(0, 1)
        moved = convert_to_tensor(item["masks"], track_meta=False)
        return unit * 2 - 1, moved.round().to(masks.dtype) if not masks.is_floating_point() else moved

    def batch(self, images: torch.Tensor, labels: torch.Tensor, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 1, S, S) in [-1, 1] and labels (B, S, S) int64, each pair with its own seed."""
        out, moved = self.batch_masks(images, labels[:, None], seeds)
        return out, moved[:, 0]

    def batch_masks(self, images: torch.Tensor, masks: torch.Tensor, seeds: list[int]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 1, S, S) and masks (B, C, S, S), each item with its own seed: at once where the config has
        a batched path, else item by item."""
        if self.batched is not None:
            return self.batched(images, masks, seeds)
        if self.transform is None:
            return images, masks
        items = [self(image, mask, seed) for image, mask, seed in zip(images, masks, seeds, strict=True)]
        return torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])


BATCHED = ("affine_prob", "flip_prob", "gain_prob", "depth_gain_prob", "contrast_prob")


def batchable(config: AugmentConfig) -> bool:
    """Whether `config` uses only the transforms `BatchedTransforms` holds (the gentle and light presets do)."""
    return all(getattr(config, f.name) == 0 for f in fields(config)
               if f.name.endswith("_prob") and f.name not in BATCHED)


class BatchedTransforms:
    """Affine, flip, depth gain, gain and gamma on a whole batch at once, each item from its own seed.

    The same transforms and parameter distributions as the MONAI pipeline (`build_transform`): MONAI's affine
    (rotation, shear, translation and per-axis grid scale, composed as its `AffineGrid` does), `RandFlipd`,
    `RandDepthGaind`, `RandScaleIntensityd` and `RandAdjustContrastd`, in that order; but the parameters of all
    items are drawn first (each from a generator seeded by the item's seed alone, so an item still depends on its
    seed only) and every tensor operation then runs once for the batch: one `grid_sample` instead of one MONAI
    resampling per item. An item not augmented (`probability`) comes back as it was (clipped into [-1, 1]).
    """

    def __init__(self, config: AugmentConfig, size: int):
        self.config, self.size = config, size

    def parameters(self, seed: int) -> dict[str, Any]:
        """One item's draws, in a fixed order whatever is applied (a fixed stream per seed)."""
        c = self.config
        u = random.Random(seed).uniform  # the stdlib's generator: seeding it is 100x cheaper than numpy's
        grid_scale = (1.0 / c.scale[1] - 1.0, 1.0 / c.scale[0] - 1.0)  # MONAI scales the grid: zoom z is 1/z
        drawn = {
            "apply": u(0, 1) < c.probability,
            "affine": u(0, 1) < c.affine_prob, "angle": math.radians(u(*c.rotate_deg)),
            "shear": (u(*c.shear), u(*c.shear)),
            "translate": (u(*c.translate) * self.size, u(*c.translate) * self.size),
            "scale": (1.0 + u(*grid_scale), 1.0 + u(*grid_scale)),
            "flip": u(0, 1) < c.flip_prob,
            "depth": u(0, 1) < c.depth_gain_prob, "slope": u(*c.depth_gain),
            "gain": u(0, 1) < c.gain_prob, "factor": u(c.gain[0] - 1.0, c.gain[1] - 1.0),
            "contrast": u(0, 1) < c.contrast_prob, "gamma": u(*c.contrast_gamma),
        }
        return drawn

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, seeds: list[int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 1, S, S) in [-1, 1], masks (B, C, S, S) (label maps, field of view): the same out, masks
        moved with the image (nearest, zero padding) in their own dtype, the image clipped into [-1, 1]."""
        draws = [self.parameters(seed) for seed in seeds]
        apply = torch.tensor([d["apply"] for d in draws])
        if not apply.any():
            return images.clamp(-1, 1), masks
        unit = (images.float() + 1) / 2
        moving = torch.tensor([d["apply"] and d["affine"] for d in draws])
        if moving.any():
            grid = self._grid([d for d, m in zip(draws, moving.tolist(), strict=True) if m], images.shape[-1])
            unit = unit.clone()
            unit[moving] = F.grid_sample(unit[moving], grid, mode="bilinear", padding_mode="zeros",
                                         align_corners=False)
            moved = F.grid_sample(masks[moving].float(), grid, mode="nearest", padding_mode="zeros",
                                  align_corners=False)
            masks = masks.clone()
            masks[moving] = moved.round().to(masks.dtype) if not masks.is_floating_point() else moved
        flip = torch.tensor([d["apply"] and d["flip"] for d in draws])
        if flip.any():
            unit, masks = unit.clone(), masks.clone()
            unit[flip] = unit[flip].flip(-1)
            masks[flip] = masks[flip].flip(-1)
        unit = self._intensity(unit, draws)
        out = torch.where(apply.view(-1, 1, 1, 1), unit.clamp(0, 1) * 2 - 1, images.float().clamp(-1, 1))
        return out.to(images.dtype), masks

    @staticmethod
    def _grid(draws: list[dict[str, Any]], size: int) -> torch.Tensor:
        """Sampling grids (N, S, S, 2) of MONAI's affine: output pixel c (centred pixel coordinates, rows then
        columns) reads the input at R @ Sh @ T @ Sc @ c, as `monai.transforms.AffineGrid` composes them."""
        thetas = []
        for d in draws:
            cos, sin = math.cos(d["angle"]), math.sin(d["angle"])
            rotate = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])
            shear = np.array([[1, d["shear"][0], 0], [d["shear"][1], 1, 0], [0, 0, 1]])
            translate = np.array([[1, 0, d["translate"][0]], [0, 1, d["translate"][1]], [0, 0, 1]])
            scale = np.diag([d["scale"][0], d["scale"][1], 1.0])
            affine = rotate @ shear @ translate @ scale  # on (row, column) pixel coordinates
            swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])  # torch's grids are (x = column, y = row)
            xy = swap @ affine @ swap
            xy[:2, 2] *= 2.0 / size  # pixels to torch's normalised coordinates (the linear part is the same)
            thetas.append(xy[:2])
        theta = torch.tensor(np.stack(thetas), dtype=torch.float32)  # (N, 2, 3)
        return (_base_grid(size) @ theta.transpose(1, 2)).view(len(draws), size, size, 2)

    @staticmethod
    def _intensity(unit: torch.Tensor, draws: list[dict[str, Any]]) -> torch.Tensor:
        """Depth gain, gain, then gamma (MONAI's `AdjustContrast`: on the image's own min-max range), per item."""
        n, height = unit.shape[0], unit.shape[-2]

        def per_item(key: str, value: str, default: float) -> torch.Tensor:
            return torch.tensor([d[value] if d[key] else default for d in draws], dtype=unit.dtype).view(n, 1, 1, 1)

        depth = torch.linspace(-0.5, 0.5, height, dtype=unit.dtype).view(1, 1, -1, 1)
        unit = unit * (1.0 + per_item("depth", "slope", 0.0) * depth)
        unit = unit * (1.0 + per_item("gain", "factor", 0.0))
        contrast = torch.tensor([d["contrast"] for d in draws])
        if contrast.any():
            chosen = unit[contrast]
            low = chosen.amin(dim=(1, 2, 3), keepdim=True)
            span = chosen.amax(dim=(1, 2, 3), keepdim=True) - low
            gamma = per_item("contrast", "gamma", 1.0)[contrast]
            unit = unit.clone()
            unit[contrast] = ((chosen - low) / (span + 1e-7)).pow(gamma) * span + low
        return unit


@functools.lru_cache(maxsize=8)
def _base_grid(size: int) -> torch.Tensor:
    """Pixel centres in torch's normalised coordinates, (1, S*S, 3) rows of (x, y, 1): `affine_grid`'s own grid,
    made once per size (affine_grid rebuilds it at every call, which costs more than the sampling at 64 px)."""
    xy = F.affine_grid(torch.eye(2, 3)[None], [1, 1, size, size], align_corners=False).view(1, -1, 2)
    return torch.cat([xy, torch.ones(1, size * size, 1)], dim=-1)


def _share_state(transform: Any, state: np.random.RandomState) -> None:
    """Make every randomised transform in the tree draw from `state` (Compose would reseed its children)."""
    from monai.transforms import Randomizable

    children = getattr(transform, "transforms", None)
    if children is not None:  # Compose, OneOf: own choice from `state`, then the children
        Randomizable.set_random_state(transform, state=state)
        for child in children:
            _share_state(child, state)
    elif isinstance(transform, Randomizable):
        transform.set_random_state(state=state)
