"""What a denoising network looks like: its kind, its size preset and its conditioning inputs.

Size presets fill the width/depth fields that are left as None, so a saved config always holds the
resolved numbers (a preset changed later does not change an old run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sonosynth.errors import SonosynthError
from sonosynth.settings import Config

KINDS = ("spade", "concat", "joint")
# "monai": MONAI's SPADE (3x3 convolutions, instance-normalised scale/shift, with
# `spade_intermediate_channels` hidden); "light": one 1x1 scale/shift from the condition
# (per-label, CLADE-style), several times cheaper on a CPU (see docs/models.md).
SPADE_BLOCKS = ("monai", "light")
# How a latent model's full-resolution condition reaches the latent grid (`ConditionalDenoiser.encode_condition`).
CONDITION_ENCODERS = ("area", "learned")

# Width/depth per size. `attention_levels` marks levels with self-attention; MONAI's U-Nets also
# always put one attention block in the middle (lowest resolution), which is where it is cheap.
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    # For tests: a few tens of thousands of parameters.
    # Three levels so the middle block's attention runs at 1/4 of the side (at 1/2 it needs
    # (S/2)^4 attention weights: tens of GB at 256 px).
    "tiny": {
        "channels": [8, 16, 16],
        "layers_per_block": 1,
        "attention_levels": [False, False, False],
        "norm_num_groups": 4,
        "spade_intermediate_channels": 8,
        "spade_block": "light",
        "num_head_channels": 8,
    },
    # For CPU demos at 64-128 px: the label map already carries the layout, so the network needs
    # little capacity or receptive field; no attention above the middle block.
    "small": {
        "channels": [16, 32, 64],
        "layers_per_block": 1,
        "attention_levels": [False, False, False],
        "norm_num_groups": 8,
        "spade_intermediate_channels": 16,
        "spade_block": "light",
        "num_head_channels": 32,
    },
    # `small` at twice the width (about 4x its compute, 2.5M parameters): the generator-size lever a CPU can
    # afford at 64 px (`base` trains about 23x slower than `small` there).
    "medium": {
        "channels": [32, 64, 128],
        "layers_per_block": 1,
        "attention_levels": [False, False, False],
        "norm_num_groups": 8,
        "spade_intermediate_channels": 32,
        "spade_block": "light",
        "num_head_channels": 32,
    },
    # For a GPU at 256 px.
    "base": {
        "channels": [64, 128, 192, 256],
        "layers_per_block": 2,
        "attention_levels": [False, False, False, True],
        "norm_num_groups": 32,
        "spade_intermediate_channels": 64,
        "spade_block": "monai",
        "num_head_channels": 32,
    },
}


@dataclass
class ModelConfig(Config):
    """A denoiser: `kind` (spade | concat | joint), `size` preset and conditioning channels.

    - `num_labels`: K label values including background (one-hot channels of the condition).
    - `fov_channel`: the scanner's field of view as one more condition channel, so generated
      images get the fan shape and black surround.
    - `coord_channels`: normalised depth and lateral position channels (for patch training).
    - `class_cardinalities`: number of values of each categorical attribute, in order; each gets
      one extra "unknown" index used for classifier-free guidance's null class.
    - `spade_block`: which spatially-adaptive normaliser the spade decoder uses (`SPADE_BLOCKS`).
    - `latent_channels`, `latent_factor`: set for latent diffusion (`sonosynth train --autoencoder AE`): the
      network denoises the autoencoder's latents, `latent_factor` times smaller than the image, and its
      condition (built at the image's resolution) reaches the latent grid through `condition_encoder`:
      `area` (each latent cell sees the share of each label under it) or `learned` (that area resize plus a
      small strided convolutional encoder's residual, zero at initialisation, which can see shapes inside a
      cell; `CONDITION_ENCODERS`).
    """

    what: ClassVar[str] = "model config"

    kind: str = "spade"
    size: str = "small"
    num_labels: int = 2
    fov_channel: bool = True
    coord_channels: bool = False
    class_cardinalities: list[int] = field(default_factory=list)
    channels: list[int] | None = None
    layers_per_block: int | None = None
    attention_levels: list[bool] | None = None
    norm_num_groups: int | None = None
    spade_intermediate_channels: int | None = None
    spade_block: str | None = None
    num_head_channels: int | None = None
    latent_channels: int | None = None  # None: pixel space
    latent_factor: int = 1
    condition_encoder: str = "area"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SonosynthError(f"model kind must be one of {list(KINDS)}, got '{self.kind}'")
        if self.latent_channels is not None and self.kind == "joint":
            raise SonosynthError("a 'joint' model generates its mask in pixel space: latent models are spade or concat")
        if self.latent_factor < 1 or (self.latent_channels is None and self.latent_factor != 1):
            raise SonosynthError(f"latent_factor must be 1 without latents and at least 1 with them, "
                                 f"got {self.latent_factor}")
        if self.condition_encoder not in CONDITION_ENCODERS:
            raise SonosynthError(f"condition_encoder must be one of {list(CONDITION_ENCODERS)}, "
                                 f"got '{self.condition_encoder}'")
        if self.size not in SIZE_PRESETS:
            raise SonosynthError(f"model size must be one of {list(SIZE_PRESETS)}, got '{self.size}'")
        if self.num_labels < 2:
            raise SonosynthError(f"num_labels must be at least 2 (background + one label), got {self.num_labels}")
        self.class_cardinalities = [int(c) for c in self.class_cardinalities]
        if any(c < 1 for c in self.class_cardinalities):
            raise SonosynthError(f"class_cardinalities must be positive, got {self.class_cardinalities}")
        if self.channels is not None and self.attention_levels is None:
            # Custom widths: the preset's attention pattern may not fit; attend only in the middle block.
            self.attention_levels = [False] * len(self.channels)
        for name, value in SIZE_PRESETS[self.size].items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, list) else value)
        self.channels = [int(c) for c in self.channels]
        self.attention_levels = [bool(a) for a in self.attention_levels]
        if self.spade_block not in SPADE_BLOCKS:
            raise SonosynthError(f"spade_block must be one of {list(SPADE_BLOCKS)}, got '{self.spade_block}'")
        if len(self.attention_levels) != len(self.channels):
            raise SonosynthError(
                f"attention_levels {self.attention_levels} must have one entry per level of channels {self.channels}"
            )
        if any(c % self.norm_num_groups for c in self.channels):
            raise SonosynthError(
                f"channels {self.channels} must be multiples of norm_num_groups={self.norm_num_groups}"
            )

    @property
    def condition_channels(self) -> int:
        """Channels of the spatial condition: one-hot labels (not for joint) + fov + 2 coordinates."""
        labels = 0 if self.kind == "joint" else self.num_labels
        return labels + int(self.fov_channel) + 2 * int(self.coord_channels)

    @property
    def sample_channels(self) -> int:
        """Channels the diffusion runs on: the image (or its latent), plus the one-hot mask for joint."""
        return (self.latent_channels or 1) + (self.num_labels if self.kind == "joint" else 0)

    @property
    def downsampling_factor(self) -> int:
        """Image sides must be multiples of this (the network's levels, times the autoencoder's factor)."""
        return 2 ** (len(self.channels) - 1) * self.latent_factor

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, origin: str | None = None) -> ModelConfig:
        """Strict, but a diffusers `config.json` may be passed as it is (its `_` keys are skipped)."""
        return super().from_dict({k: v for k, v in (data or {}).items() if not k.startswith("_")}, origin)
