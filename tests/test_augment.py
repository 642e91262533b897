"""Augmentation: one geometric change for image, mask and fov; gentle intensity; reproducible."""

from __future__ import annotations

import torch

from sonosynth.diffusion.augment import AugmentConfig, augment_pair, random_crop
from sonosynth.models.denoiser import coordinate_channels


def _item(size: int = 48) -> dict[str, torch.Tensor]:
    """A bright off-centre disc labelled 1 on a dark speckled background, inside a full fov."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - 20) ** 2 + (xx - 14) ** 2) <= 64
    speckle = torch.rand(size, size, generator=torch.Generator().manual_seed(0)) * 0.2
    image = torch.where(disc, 0.8, 0.2) + speckle
    return {
        "image": (image * 2 - 1)[None].float(),
        "label": disc.long(),
        "fov": torch.ones(1, size, size),
        "classes": torch.tensor([1]),
    }


def _strong() -> AugmentConfig:
    return AugmentConfig(probability=1.0, rotate_deg=20, scale=0.15, translate=0.1, gain=0.2, depth_gain=0.2,
                         gamma=0.2)


def test_image_and_mask_move_together():
    item = _item()
    for seed in range(5):
        out = augment_pair(item, torch.Generator().manual_seed(seed), _strong())
        assert out["label"].dtype == torch.long and set(out["label"].unique().tolist()) <= {0, 1}
        assert not torch.equal(out["label"], item["label"])  # it did move
        inside = out["image"][0][out["label"] == 1].mean()
        outside = out["image"][0][(out["label"] == 0) & (out["fov"][0] > 0)].mean()
        assert inside > outside + 0.5, "the bright disc must stay under the warped mask"
        # The fov is warped too: padded (out-of-view) pixels are black in the image (bar the blended rim).
        outside_fov = out["image"][0][out["fov"][0] == 0]
        assert outside_fov.numel() > 0 and outside_fov.mean() < -0.8


def test_reproducible_and_off_switches():
    item = _item()
    a = augment_pair(item, torch.Generator().manual_seed(3), _strong())
    b = augment_pair(item, torch.Generator().manual_seed(3), _strong())
    c = augment_pair(item, torch.Generator().manual_seed(4), _strong())
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])
    off = augment_pair(item, torch.Generator().manual_seed(3), AugmentConfig(enabled=False))
    assert torch.equal(off["image"], item["image"]) and torch.equal(off["label"], item["label"])
    assert off["classes"] is item["classes"]


def test_no_flip_by_default_and_flip_when_configured():
    item = _item()
    still = AugmentConfig(probability=1.0, rotate_deg=0, scale=0, translate=0, gain=0, depth_gain=0, gamma=0)
    out = augment_pair(item, torch.Generator().manual_seed(0), still)
    assert torch.equal(out["label"], item["label"])
    assert torch.allclose(out["image"], item["image"], atol=1e-5)
    flipped = augment_pair(item, torch.Generator().manual_seed(0), AugmentConfig(**{**still.to_dict(), "hflip": 1.0}))
    assert torch.equal(flipped["label"], item["label"].flip(-1))


def test_intensity_keeps_black_black_and_range():
    item = _item()
    item["image"][:, :, :8] = -1.0  # a black band (outside the fan)
    gain_only = AugmentConfig(probability=1.0, rotate_deg=0, scale=0, translate=0, gain=0.3, depth_gain=0.3,
                              gamma=0.3)
    for seed in range(4):
        out = augment_pair(item, torch.Generator().manual_seed(seed), gain_only)
        assert torch.all(out["image"][:, :, :8] == -1.0)
        assert out["image"].min() >= -1.0 and out["image"].max() <= 1.0


def test_random_crop_cuts_the_same_window_everywhere():
    item = _item()
    item["coords"] = coordinate_channels(1, 48)[0]
    out = random_crop(item, 16, torch.Generator().manual_seed(1))
    assert out["image"].shape == (1, 16, 16) and out["label"].shape == (16, 16) and out["coords"].shape == (2, 16, 16)
    # The coordinate channels tell where the window was: find it and check image and label agree.
    ramp = torch.linspace(-1, 1, 48)
    top = int(torch.argmin((ramp - out["coords"][0, 0, 0]).abs()))
    left = int(torch.argmin((ramp - out["coords"][1, 0, 0]).abs()))
    assert torch.equal(out["image"], item["image"][:, top : top + 16, left : left + 16])
    assert torch.equal(out["label"], item["label"][top : top + 16, left : left + 16])
    tops = {int(random_crop(item, 16, torch.Generator().manual_seed(s))["coords"][0, 0, 0] * 100) for s in range(8)}
    assert len(tops) > 1


def test_config_rejects_unknown_fields():
    import pytest

    from sonosynth.errors import SonosynthError

    with pytest.raises(SonosynthError, match=r"unknown augmentation fields \['rotate'\]"):
        AugmentConfig.from_dict({"rotate": 3})
    assert AugmentConfig.from_dict(AugmentConfig(hflip=0.5).to_dict()) == AugmentConfig(hflip=0.5)
