"""`AutoencoderConfig`: everything that determines an autoencoder training run (AE/config.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from sonosynth.augment import AugmentConfig
from sonosynth.errors import SonosynthError
from sonosynth.settings import MIXED_PRECISION, Config, at_least_one, patch_problems

# Settings a resumed run may change (the rest must match the checkpoint's).
MAY_CHANGE_ON_RESUME = (
    "max_steps", "checkpoint_every", "keep_checkpoints", "sample_every", "num_samples", "mixed_precision",
)


@dataclass
class AutoencoderConfig(Config):
    """A KL autoencoder for single-channel ultrasound, trained on random patches of letterboxed images.

    It is convolutional, so patches (`patch_size`) train it at a fraction of the cost; but its GroupNorm
    layers normalise over the whole input, so a patch-trained model reconstructs whole images with other
    statistics (measured on HC18 at 256 px: 22 % too bright) until it is fine-tuned on whole images
    (`patch_size: null`, with `init`, and `decoder_only` to keep its latent space).
    Loss: L1 + `frequency_weight` x a log-amplitude spectrum L1 (keeps speckle,
    which pixel L1 alone blurs away) + `kl_weight` x KL, and after `adversarial_start` steps
    `adversarial_weight` x a patch-GAN term (MONAI `PatchDiscriminator`, least squares).
    """

    what: ClassVar[str] = "autoencoder config"
    renamed: ClassVar[dict[str, str]] = {"image_size": "size", "lr": "learning_rate"}

    datasets: list[str] = field(default_factory=list)
    init: str | None = None  # start from this earlier autoencoder run's weights (fine-tuning); ignored on resume
    # With init: train the decoder only. The encoder, and so the latent space and every denoiser trained on it,
    # stays as it was; used to fit a patch-trained decoder to whole images (GroupNorm's statistics are per image).
    decoder_only: bool = False
    split: str = "auto"  # auto: each dataset's train split when it is split, else every image
    size: int = 256
    patch_size: int | None = 64  # None: whole images
    channels: tuple[int, ...] = (32, 64, 64)  # one level each; the latent is size / 2^(levels - 1)
    latent_channels: int = 4
    layers_per_block: int = 1
    batch_size: int = 8
    learning_rate: float = 1e-4
    max_steps: int = 2000
    kl_weight: float = 1e-6
    frequency_weight: float = 0.1
    adversarial_weight: float = 0.05
    adversarial_start: int = 500
    discriminator_channels: int = 32
    ema_decay: float = 0.999
    mixed_precision: str = "auto"  # auto: bf16 (or fp16) on a GPU, none on CPU; the losses are taken in float32
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig.preset("gentle"))
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    sample_every: int = 500
    num_samples: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_dict(self.augment)
        self.datasets = [str(d) for d in self.datasets]
        self.channels = tuple(int(c) for c in self.channels)
        problems = []
        if not self.channels or min(self.channels) < 1:
            problems.append("channels must be one or more positive widths")
        problems += at_least_one(self, ("size", "batch_size", "max_steps", "checkpoint_every", "sample_every",
                                        "latent_channels", "layers_per_block", "discriminator_channels"))
        factor = self.downsampling if self.channels else 1
        for name in ("size", "patch_size"):
            value = getattr(self, name)
            if value is not None and value % factor:
                problems.append(f"{name} {value} must be a multiple of the downsampling factor {factor}")
        problems += patch_problems(self.patch_size, self.size)
        for name in ("kl_weight", "frequency_weight", "adversarial_weight", "adversarial_start"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append("ema_decay must be in [0, 1)")
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision must be one of {list(MIXED_PRECISION)}")
        if self.decoder_only and not self.init:
            problems.append("decoder_only fine-tunes an earlier autoencoder's decoder: give init (--init AE)")
        if problems:
            raise SonosynthError("invalid autoencoder config: " + "; ".join(problems))

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def train_size(self) -> int:
        return self.patch_size or self.size

    @property
    def norm_groups(self) -> int:
        """GroupNorm groups: the largest divisor of every width, at most 32 (diffusers' default)."""
        return max(g for g in range(1, 33) if all(c % g == 0 for c in self.channels))

    def resume_key(self) -> dict:
        """What must match a checkpoint's config to resume from it."""
        return {k: v for k, v in self.to_dict().items() if k not in MAY_CHANGE_ON_RESUME}
