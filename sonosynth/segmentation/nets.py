"""Segmentation networks: a plain MONAI U-Net in a few sizes, never pretrained.

A standard architecture is the point: the downstream experiment must show what synthetic data does
for an ordinary segmenter, not for a tuned one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sonosynth.errors import SonosynthError


@dataclass(frozen=True)
class UNetSize:
    """Channels per level and how many residual units each level has."""

    channels: tuple[int, ...]
    num_res_units: int


# tiny: tests (~10K parameters); small: CPU default (~0.2M); deep: small's widths with two more levels, so a
# 256 px head fits the receptive field at about small's cost (~1.3M, the bottleneck 8 px at 256); base: GPU (~6M).
UNET_SIZES: dict[str, UNetSize] = {
    "tiny": UNetSize(channels=(4, 8, 16), num_res_units=0),
    "small": UNetSize(channels=(16, 32, 64, 128), num_res_units=1),
    "deep": UNetSize(channels=(16, 32, 64, 128, 128, 128), num_res_units=1),
    "base": UNetSize(channels=(32, 64, 128, 256, 512), num_res_units=2),
}


def build_unet(size: str, num_labels: int, in_channels: int = 1) -> torch.nn.Module:
    """A 2-D MONAI UNet mapping `in_channels` images to `num_labels` logits (background included)."""
    from monai.networks.nets import UNet

    if size not in UNET_SIZES:
        raise SonosynthError(f"unknown network size '{size}' (choose from {', '.join(UNET_SIZES)})")
    if num_labels < 2:
        raise SonosynthError(f"a segmenter needs at least 2 labels (background and one structure), got {num_labels}")
    spec = UNET_SIZES[size]
    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_labels,
        channels=spec.channels,
        strides=(2,) * (len(spec.channels) - 1),
        num_res_units=spec.num_res_units,
        norm="INSTANCE",
    )


def min_image_size(size: str) -> int:
    """Smallest training size the network's downsampling allows (each level halves the image)."""
    return 2 ** (len(UNET_SIZES[size].channels) - 1) * 4
