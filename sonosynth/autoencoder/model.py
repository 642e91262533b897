"""The autoencoder, its discriminator and the losses that train them (all built on diffusers and MONAI)."""

from __future__ import annotations

import math
from typing import Any

import torch

from sonosynth.autoencoder.config import AutoencoderConfig


def build_autoencoder(config: AutoencoderConfig) -> Any:
    """diffusers' `AutoencoderKL` for one channel, convolutional only (no attention in the middle block, so it
    trains on patches; its GroupNorm statistics still differ between a patch and a whole image, hence the
    whole-image fine-tuning of `AutoencoderConfig`); loads back with `AutoencoderKL.from_pretrained(AE/model)`."""
    from diffusers import AutoencoderKL

    levels = len(config.channels)
    return AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=config.channels,
        layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
        norm_num_groups=config.norm_groups, sample_size=config.size, mid_block_add_attention=False,
    )


def build_discriminator(config: AutoencoderConfig) -> Any:
    """MONAI's patch-GAN discriminator, with as many stride-2 layers (up to 3) as the training patch allows."""
    from monai.networks.nets import PatchDiscriminator

    layers = max(1, min(3, int(math.log2(config.train_size)) - 3))
    return PatchDiscriminator(spatial_dims=2, channels=config.discriminator_channels, in_channels=1,
                              num_layers_d=layers)


def log_spectrum(images: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.fft.rfft2(images.float(), norm="ortho").abs())


def frequency_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between log-amplitude spectra: pixel L1 alone is minimised by a blur, which removes the speckle
    (the high frequencies) that makes an ultrasound image look like one."""
    return (log_spectrum(reconstruction) - log_spectrum(target)).abs().mean()


def load_autoencoder(path: str) -> Any:
    """A trained autoencoder (an AE run folder or its model/ folder), frozen, for latent diffusion."""
    from pathlib import Path

    from diffusers import AutoencoderKL

    from sonosynth.errors import SonosynthError

    folder = Path(path)
    if (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    if not (folder / "config.json").is_file():
        raise SonosynthError(f"{path}: not an autoencoder (no config.json here or in model/; "
                             "train one with `sonosynth autoencoder train`)")
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), use_safetensors=True, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise SonosynthError(f"{folder}: cannot load the autoencoder ({str(exc).strip()})") from None
    if vae.config.in_channels != 1:
        raise SonosynthError(f"{folder}: the autoencoder takes {vae.config.in_channels} channels; ultrasound has 1")
    vae.requires_grad_(False)
    return vae.eval()


def latent_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def calibrate_scaling(vae: Any, images: torch.Tensor) -> float:
    """1 / std of the latents of `images`, so the diffusion runs on unit-variance latents (as Stable
    Diffusion's 0.18215 does for its autoencoder; ours is measured on the training images)."""
    latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
    return float(1.0 / latents.float().std().clamp_min(1e-6))
