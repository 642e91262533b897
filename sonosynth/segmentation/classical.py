"""Strong classical augmentation for the segmenter: the baseline to compare synthetic data against.

Everything is a MONAI dictionary transform in one `Compose`, seeded with `set_random_state`, so a
seed fixes every draw. Geometry (affine, elastic, optional flip) moves image and mask together
(image bilinear, mask nearest, zero padding); the intensity changes touch the image only:

- depth gain / bias field: `RandBiasFieldd`, a smooth multiplicative field (like a
  time-gain-compensation curve that differs between scanners);
- contrast: `RandAdjustContrastd` (gamma); histogram shift: `RandHistogramShiftd`;
- speckle-like noise: MONAI has no multiplicative noise. `RandRicianNoised` is the closest
  well-kept option: the Rician distribution is that of an envelope-detected echo (signal plus
  complex Gaussian scatter), which is how ultrasound speckle arises. Its one departure from
  speckle, noise on black pixels, is removed by masking the noise to the pixels that carried
  signal before it was added (`CopyItemsd` + `MaskIntensityd`): the padding and fan border stay
  black, as they would under multiplicative noise;
- blur: `RandGaussianSmoothd` (a lower-resolution probe or heavier speckle reduction);
- acoustic shadows: `RandCoarseDropoutd`, tall narrow black boxes on the image only (the
  anatomy under a shadow is still there, so the mask keeps it).

Images come in as (B, 1, S, S) in [-1, 1]; the transforms run on [0, 1] (black = 0, so gains
and masking behave) and the result is clipped back into [-1, 1]. Sizes are fractions of the image
side, so a config means the same at 64 and at 256 px; blur is in pixels at the training size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from sonosynth.errors import SonosynthError
from sonosynth.settings import Config

if TYPE_CHECKING:
    from monai.transforms import Compose

Pair = tuple[float, float]

# Allowed values per setting (inclusive), for both ends of a range; *_prob settings lie in [0, 1].
_BOUNDS: dict[str, tuple[float, float]] = {
    "rotate_deg": (-180.0, 180.0),
    "scale": (0.1, 10.0),
    "translate": (-1.0, 1.0),
    "shear": (-1.0, 1.0),
    "elastic_spacing": (0.01, 1.0),
    "elastic_magnitude": (0.0, 0.5),
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


@dataclass
class ClassicalAugmentConfig(Config):
    """Ranges (low, high) and the probability that each transform is applied to an item."""

    what: ClassVar[str] = "classical augmentation"

    # geometry, image and mask together
    affine_prob: float = 0.9
    rotate_deg: Pair = (-20.0, 20.0)
    scale: Pair = (0.8, 1.2)  # zoom of the content (> 1 enlarges)
    translate: Pair = (-0.1, 0.1)  # fraction of the side, each axis
    shear: Pair = (-0.1, 0.1)  # shear factor, each axis
    elastic_prob: float = 0.3
    elastic_spacing: float = 0.25  # distance between control points, fraction of the side
    elastic_magnitude: Pair = (0.01, 0.03)  # std of the control-point offsets, fraction of the side
    # intensity, image only
    bias_field_prob: float = 0.5
    bias_field_coeff: Pair = (-0.15, 0.15)  # Legendre coefficients of the log gain
    bias_field_degree: int = 3
    contrast_prob: float = 0.5
    contrast_gamma: Pair = (0.6, 1.7)
    histogram_shift_prob: float = 0.3
    histogram_shift_points: tuple[int, int] = (5, 10)
    noise_prob: float = 0.5
    noise_std: float = 0.08  # Rician noise std drawn from [0, noise_std], image in [0, 1]
    blur_prob: float = 0.3
    blur_sigma: Pair = (0.25, 1.0)  # pixels at the training size
    dropout_prob: float = 0.3
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
            raise SonosynthError("invalid classical augmentation: " + "; ".join(problems))


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


def build_classical_transform(
    config: ClassicalAugmentConfig, size: int, seed: int = 0, flip: bool = False
) -> Compose:
    """One seeded MONAI `Compose` over {"image", "label"} items of shape (1, size, size), image in [0, 1].

    `flip` adds a left-right flip with probability 0.5 (the segmenter's `flip` setting).
    """
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
    )

    both, image = ("image", "label"), "image"
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
    # Affine and elastic are drawn independently, but run as one of four branches: an item that
    # gets both is resampled once (Rand2DElasticd warps its control grid by the affine) and an
    # item that gets neither is not resampled at all, where a skipped MONAI spatial transform
    # still resamples through an identity grid. This halves the cost of the geometry.
    pa, pe = config.affine_prob, config.elastic_prob
    transforms = [
        OneOf(
            [
                Rand2DElasticd(prob=1.0, **elastic, **affine, **spatial),
                RandAffined(prob=1.0, cache_grid=True, **affine, **spatial),
                Rand2DElasticd(prob=1.0, **elastic, **spatial),
                Identityd(keys=both),
            ],
            weights=[pa * pe, pa * (1 - pe), (1 - pa) * pe, (1 - pa) * (1 - pe)],
        )
    ]
    if flip:
        transforms.append(RandFlipd(keys=both, prob=0.5, spatial_axis=1))
    transforms += [
        CopyItemsd(keys=image, names="signal"),  # where the image is non-black before any noise
        RandBiasFieldd(keys=image, prob=config.bias_field_prob, degree=config.bias_field_degree,
                       coeff_range=config.bias_field_coeff),
        RandAdjustContrastd(keys=image, prob=config.contrast_prob, gamma=config.contrast_gamma),
        RandHistogramShiftd(keys=image, prob=config.histogram_shift_prob,
                            num_control_points=config.histogram_shift_points),
        RandRicianNoised(keys=image, prob=config.noise_prob, std=config.noise_std, sample_std=True),
        MaskIntensityd(keys=image, mask_key="signal"),
        RandGaussianSmoothd(keys=image, prob=config.blur_prob, sigma_x=config.blur_sigma, sigma_y=config.blur_sigma),
        RandCoarseDropoutd(
            keys=image,
            prob=config.dropout_prob,
            holes=config.dropout_holes[0],
            max_holes=config.dropout_holes[1],
            spatial_size=(pixels(config.dropout_height[0]), pixels(config.dropout_width[0])),
            max_spatial_size=(pixels(config.dropout_height[1]), pixels(config.dropout_width[1])),
            fill_value=0.0,
        ),
    ]
    compose = Compose(transforms)
    compose.set_random_state(seed=seed)
    return compose


def classical_augment_batch(
    images: torch.Tensor, labels: torch.Tensor, transform: Compose
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `transform` (from `build_classical_transform`) to each pair of a batch.

    images (B, 1, S, S) float in [-1, 1] and labels (B, S, S) int64 in; the same shapes, dtypes and
    range out, with no label value that was not in the input (besides 0, from padding).
    """
    from monai.data import get_track_meta, set_track_meta
    from monai.utils import convert_to_tensor

    out_images, out_labels = [], []
    tracking = get_track_meta()
    set_track_meta(False)  # plain tensors: MONAI's metadata bookkeeping would double the cost
    try:
        for image, label in zip((images + 1) / 2, labels[:, None].float(), strict=True):
            item = transform({"image": image, "label": label})
            out_images.append(convert_to_tensor(item["image"], dtype=images.dtype, track_meta=False))
            out_labels.append(convert_to_tensor(item["label"], track_meta=False))
    finally:
        set_track_meta(tracking)
    unit = torch.stack(out_images).clamp(0, 1)
    return unit * 2 - 1, torch.stack(out_labels)[:, 0].round().long()
