"""Augmentation for mask-conditioned ultrasound training, applied identically to image and mask.

Ultrasound appearance is tied to geometry: the probe sits at the top, attenuation grows with depth
and the anatomy has a handedness. So the defaults are gentle: a small rotation/scale/shift, an
overall gain, a depth-dependent gain (like a time-gain-compensation knob) and a gamma change.
Flips are off unless asked for. Every random number comes from the generator passed in, so a
resumed run draws exactly the same augmentations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from sonosynth.settings import Config

Item = dict[str, Any]


@dataclass
class AugmentConfig(Config):
    """Magnitudes of the random changes; 0 switches a change off."""

    what: ClassVar[str] = "augmentation"

    enabled: bool = True
    probability: float = 0.8  # chance that an item is augmented at all
    rotate_deg: float = 5.0
    scale: float = 0.05  # relative zoom, +-
    translate: float = 0.03  # fraction of the image side, +-
    gain: float = 0.15  # overall brightness factor, +-
    depth_gain: float = 0.15  # gain change from top to bottom of the image, +-
    gamma: float = 0.15  # log-gamma, +-
    hflip: float = 0.0  # probability of a left-right flip (breaks anatomy's handedness; off by default)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def augment_pair(item: Item, generator: torch.Generator, config: AugmentConfig) -> Item:
    """Return a new item with the same geometric change applied to image, label, fov (and coords).

    `item` holds `image` (1,S,S) in [-1,1], `label` (S,S) long, `fov` (1,S,S) float and optionally
    `coords` (2,S,S). Coordinate channels are not warped: they describe where a pixel is in the
    output image, which is what the model sees at sampling time.
    """
    # Draw every number up front, in a fixed order, so the stream does not depend on which branch runs.
    draws = torch.rand(9, generator=generator).tolist()
    if not config.enabled or draws[0] >= config.probability:
        return dict(item)
    centred = [2.0 * d - 1.0 for d in draws[1:]]
    angle = math.radians(config.rotate_deg) * centred[0]
    zoom = 1.0 + config.scale * centred[1]
    shift_x, shift_y = 2.0 * config.translate * centred[2], 2.0 * config.translate * centred[3]
    flip = -1.0 if draws[5] < config.hflip else 1.0
    gain = 1.0 + config.gain * centred[5]
    depth_gain = config.depth_gain * centred[6]
    gamma = math.exp(config.gamma * centred[7])

    out = dict(item)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[cos * flip, -sin, shift_x], [sin * flip, cos, shift_y]], dtype=torch.float32)
    size = item["image"].shape[-2:]
    grid = F.affine_grid(theta[None], [1, 1, *size], align_corners=False)

    # Shift to [0, 2] so grid_sample's zero padding is black (-1 after shifting back).
    image = F.grid_sample(item["image"][None] + 1.0, grid, mode="bilinear", align_corners=False)[0]
    label = F.grid_sample(item["label"][None, None].float(), grid, mode="nearest", align_corners=False)[0, 0]
    fov = F.grid_sample(item["fov"][None].float(), grid, mode="nearest", align_corners=False)[0]

    # Intensity: gamma and gains act on [0, 1] brightness, so black stays black.
    brightness = (image / 2.0).clamp(0.0, 1.0) ** gamma
    depth = torch.linspace(-0.5, 0.5, size[0]).view(1, -1, 1)
    brightness = (brightness * gain * (1.0 + depth_gain * depth)).clamp(0.0, 1.0)

    out["image"] = brightness * 2.0 - 1.0
    out["label"] = label.round().long()
    out["fov"] = fov
    return out


def random_crop(item: Item, patch_size: int, generator: torch.Generator) -> Item:
    """Cut the same random patch_size window from every spatial entry (coords included).

    Coordinates must already be present (computed over the full image) so the patch still knows
    its depth and lateral position.
    """
    height, width = item["image"].shape[-2:]
    if patch_size >= height and patch_size >= width:
        return dict(item)
    top = int(torch.randint(0, height - patch_size + 1, (), generator=generator))
    left = int(torch.randint(0, width - patch_size + 1, (), generator=generator))
    out = dict(item)
    for key in ("image", "label", "fov", "coords"):
        if key in item:
            out[key] = item[key][..., top : top + patch_size, left : left + patch_size].contiguous()
    return out
