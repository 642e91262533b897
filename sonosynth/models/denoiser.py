"""The conditional denoiser: MONAI U-Nets wrapped as a diffusers model (safetensors save/load).

Three kinds share one interface, so training and sampling never branch on the kind:
- `spade`: MONAI `SPADEDiffusionModelUNet`; the encoder sees the noisy image, every decoder
  level is normalised with scale/shift predicted from the condition (label map + fov).
- `concat`: MONAI `DiffusionModelUNet` with the condition concatenated to the noisy image.
- `joint`: the same U-Net generating image and one-hot mask together (no input mask); the mask
  is read back by argmax.

Several categorical attributes are embedded one table each and the embeddings summed (added to the
time embedding), so attributes stay independent and unseen combinations still work. Each attribute
has one extra index, "unknown", which is also the null class of classifier-free guidance.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from sonosynth.models.configs import ModelConfig


class SummedAttributeEmbedding(nn.Module):
    """Embeds (B, A) attribute indices, one table per attribute, and sums them to (B, D).

    Stands in for a U-Net's single-class `nn.Embedding`; index `cardinality` of an attribute is
    its "unknown" value.
    """

    def __init__(self, cardinalities: list[int], dim: int):
        super().__init__()
        self.cardinalities = list(cardinalities)
        sizes = [c + 1 for c in self.cardinalities]
        offsets = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(sum(sizes), dim)

    def forward(self, class_labels: torch.Tensor) -> torch.Tensor:
        return self.table(class_labels + self.offsets).sum(dim=1)


class LightSPADE(nn.Module):
    """Spatially-adaptive normalisation with a 1x1 modulation: norm(x) * (1 + gamma(m)) + beta(m).

    A drop-in for MONAI's `SPADE` (same forward signature). MONAI's version runs three 3x3
    convolutions per normaliser (shared, gamma, beta) and instance-normalises gamma and beta; on a
    CPU those cost more than the rest of a small U-Net. Here one 1x1 convolution of the condition
    (area-resized to x, so thin structures survive as fractions) gives gamma and beta: on a one-hot
    label map that is a learned scale and shift per label, plus terms for fov and coordinates, as
    in class-adaptive normalisation (CLADE, Tan et al. 2021). Each decoder level still knows which
    label every pixel has; the U-Net's own convolutions supply the spatial context.
    """

    def __init__(self, label_nc: int, norm_nc: int, num_groups: int, eps: float = 1e-6):
        super().__init__()
        self.param_free_norm = nn.GroupNorm(num_groups, norm_nc, eps=eps, affine=False)
        self.gamma_beta = nn.Conv2d(label_nc, 2 * norm_nc, 1)
        self._held = SameConditionMemo()

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        gamma, beta = self._held(segmap, x.shape[2:], lambda: self._modulation(segmap, x.shape[2:]))
        return self.param_free_norm(x) * (1 + gamma) + beta

    def _modulation(self, segmap: torch.Tensor, size: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        if segmap.shape[2:] != size:
            segmap = nn.functional.interpolate(segmap, size=size, mode="area")
        gamma, beta = self.gamma_beta(segmap).chunk(2, dim=1)
        return gamma, beta


class SameConditionMemo:
    """While sampling, what a module computes from the condition alone, kept for the next step.

    A sampling loop passes the same condition tensor at every step (`Guidance` holds it), so scale and
    shift of each normaliser (18 % of a guided `small` step on a CPU, benchmarks/bench_efficiency.py) and a
    latent model's condition encoding need computing once per loop. Kept only without gradients and for
    the very same tensor object (held, so it cannot be freed and its id reused); training never hits it.
    Memory: one batch's scale and shift per normaliser (tens of MB for `small` at a 64 x 64 latent, batch 16),
    held until another condition comes.
    """

    def __init__(self) -> None:
        self._key: tuple[torch.Tensor, Any] | None = None
        self._value: Any = None

    def __call__(self, condition: torch.Tensor, extra: Any, compute: Any) -> Any:
        if torch.is_grad_enabled():
            self._key = self._value = None
            return compute()
        if self._key is None or self._key[0] is not condition or self._key[1] != extra:
            self._key, self._value = (condition, extra), compute()
        return self._value


def use_light_spade(unet: nn.Module) -> None:
    """Replace every MONAI `SPADE` normaliser of a SPADE U-Net by a `LightSPADE` of the same shape."""
    from monai.networks.blocks import SPADE

    for parent in list(unet.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SPADE):
                norm = child.param_free_norm
                light = LightSPADE(
                    label_nc=child.mlp_shared.conv.in_channels,
                    norm_nc=child.mlp_gamma.conv.out_channels,
                    num_groups=norm.num_groups,
                    eps=norm.eps,
                )
                setattr(parent, name, light)


class LearnedConditionEncoder(nn.Module):
    """Full-resolution condition -> latent grid: the area resize plus a learned residual.

    The area resize tells each latent cell the share of each label under it, but not where inside the
    cell the boundary runs; strided 3x3 convolutions (one per halving) can. The last layer starts at
    zero, so an untrained encoder is exactly the area resize and training only adds to it.
    """

    def __init__(self, channels: int, factor: int, width: int = 16):
        super().__init__()
        self.factor = factor
        layers: list[nn.Module] = []
        in_channels = channels
        for _ in range(factor.bit_length() - 1):
            layers += [nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.SiLU()]
            in_channels = width
        last = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.residual = nn.Sequential(*layers, last)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(condition, self.factor) + self.residual(condition)


def coordinate_channels(batch: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 2, S, S) normalised depth (rows) and lateral (columns) positions in [-1, 1] for a full image."""
    ramp = torch.linspace(-1.0, 1.0, size, device=device)
    depth = ramp[:, None].expand(size, size)
    lateral = ramp[None, :].expand(size, size)
    return torch.stack([depth, lateral])[None].expand(batch, 2, size, size).clone()


class ConditionalDenoiser(ModelMixin, ConfigMixin):
    """Predicts noise (or v) for `sample` at `timestep`, given a spatial condition and class labels.

    Build it with `sonosynth.models.build_model(ModelConfig(...))`; the constructor arguments are
    exactly the `ModelConfig` fields, so `config.json` next to the weights is the model config.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        kind: str = "spade",
        size: str = "small",
        num_labels: int = 2,
        fov_channel: bool = True,
        coord_channels: bool = False,
        class_cardinalities: list[int] | tuple[int, ...] = (),
        channels: list[int] | None = None,
        layers_per_block: int | None = None,
        attention_levels: list[bool] | None = None,
        norm_num_groups: int | None = None,
        spade_intermediate_channels: int | None = None,
        spade_block: str | None = None,
        num_head_channels: int | None = None,
        latent_channels: int | None = None,
        latent_factor: int = 1,
        condition_encoder: str = "area",
    ):
        super().__init__()
        cfg = ModelConfig(
            kind=kind,
            size=size,
            num_labels=num_labels,
            fov_channel=fov_channel,
            coord_channels=coord_channels,
            class_cardinalities=list(class_cardinalities),
            channels=None if channels is None else list(channels),
            layers_per_block=layers_per_block,
            attention_levels=None if attention_levels is None else list(attention_levels),
            norm_num_groups=norm_num_groups,
            spade_intermediate_channels=spade_intermediate_channels,
            spade_block=spade_block,
            num_head_channels=num_head_channels,
            latent_channels=latent_channels,
            latent_factor=latent_factor,
            condition_encoder=condition_encoder,
        )
        self.model_config = cfg
        self._encoded = SameConditionMemo()
        common: dict[str, Any] = {
            "spatial_dims": 2,
            "out_channels": cfg.sample_channels,
            "num_res_blocks": cfg.layers_per_block,
            "channels": tuple(cfg.channels),
            "attention_levels": tuple(cfg.attention_levels),
            "norm_num_groups": cfg.norm_num_groups,
            "num_head_channels": cfg.num_head_channels,
            # A placeholder size; replaced below by the summed per-attribute embedding.
            "num_class_embeds": 1 if cfg.class_cardinalities else None,
        }
        if cfg.kind == "spade":
            from monai.networks.nets import SPADEDiffusionModelUNet

            self.unet = SPADEDiffusionModelUNet(
                in_channels=cfg.sample_channels,
                label_nc=cfg.condition_channels,
                spade_intermediate_channels=cfg.spade_intermediate_channels,
                **common,
            )
            if cfg.spade_block == "light":
                use_light_spade(self.unet)
        else:
            from monai.networks.nets import DiffusionModelUNet

            self.unet = DiffusionModelUNet(in_channels=cfg.sample_channels + cfg.condition_channels, **common)
        if cfg.condition_encoder == "learned":
            self.learned_condition_encoder = LearnedConditionEncoder(cfg.condition_channels, cfg.latent_factor)
        if cfg.class_cardinalities:
            time_embed_dim = cfg.channels[0] * 4
            self.unet.class_embedding = SummedAttributeEmbedding(cfg.class_cardinalities, time_embed_dim)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:
        """Like diffusers' loader, but safetensors only, and weights that do not fit this version's network
        are an error.

        diffusers only warns and initialises missing layers at random, which would turn a model
        saved by another sonosynth version into noise without anyone noticing.
        """
        from sonosynth.errors import SonosynthError

        want_info = kwargs.pop("output_loading_info", False)
        kwargs["use_safetensors"] = True  # never fall back to a pickle (.bin) file
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        except ValueError as exc:  # a tensor of another shape: diffusers refuses before the keys can be compared
            reason = str(exc).split(" If you want")[0].replace("Cannot load  because ", "")
            raise SonosynthError(f"{pretrained_model_name_or_path}: saved weights do not fit this version's "
                                 f"network ({reason}); load it with the sonosynth version that trained it, or "
                                 "retrain") from None
        missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
        mismatched = info.get("mismatched_keys") or []
        if missing or unexpected or mismatched:
            raise SonosynthError(
                f"{pretrained_model_name_or_path}: saved weights do not fit this version's "
                f"'{model.model_config.kind}' network ({len(missing)} missing, {len(unexpected)} unexpected, "
                f"{len(mismatched)} of another shape, e.g. {(missing or unexpected or mismatched)[0]}); "
                "load it with the sonosynth version that trained it, or retrain"
            )
        return (model, info) if want_info else model

    # -- shape facts -------------------------------------------------------------------------------
    @property
    def sample_channels(self) -> int:
        return self.model_config.sample_channels

    @property
    def condition_channels(self) -> int:
        return self.model_config.condition_channels

    @property
    def null_class_labels(self) -> torch.Tensor:
        """(A,) the "unknown" index of each attribute: the null class for guidance."""
        return torch.tensor(self.model_config.class_cardinalities, dtype=torch.long, device=self.device)

    # -- the network -------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        condition: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, C_x, H, W) prediction. A missing condition or class means the null one (unconditional)."""
        batch = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if condition is None and self.condition_channels:
            side = [n * self.model_config.latent_factor for n in sample.shape[-2:]]
            condition = self.null_condition(torch.zeros(batch, self.condition_channels, *side, device=sample.device))
        if condition is not None:
            condition = self.encode_condition(condition.to(sample.dtype))
        kwargs: dict[str, Any] = {}
        if self.model_config.class_cardinalities:
            if class_labels is None:
                class_labels = self.null_class_labels.expand(batch, -1)
            kwargs["class_labels"] = self._known_or_null(class_labels.to(sample.device))
        if self.model_config.kind == "spade":
            return self.unet(sample, timestep, seg=condition, **kwargs)
        x = sample if condition is None else torch.cat([sample, condition], dim=1)
        return self.unet(x, timestep, **kwargs)

    def _known_or_null(self, class_labels: torch.Tensor) -> torch.Tensor:
        """Map -1 (unknown in `LetterboxedPairs`) to each attribute's null index."""
        null = self.null_class_labels.expand_as(class_labels)
        return torch.where(class_labels < 0, null, class_labels.long())

    # -- conditioning --------------------------------------------------------------------------------
    def make_condition(
        self,
        labels: torch.Tensor | None,
        fov: torch.Tensor | None = None,
        coords: torch.Tensor | None = None,
        size: int | None = None,
        batch: int | None = None,
    ) -> torch.Tensor | None:
        """(B, C_c, S, S) condition from a (B, S, S) label map, (B, 1, S, S) fov and (B, 2, S, S) coords,
        at the image's side S (a latent model's `forward` brings it to the latent grid: `encode_condition`).

        A missing fov means the whole square is in view; missing coords mean full-image positions.
        For `joint` the labels are not part of the condition (they are generated).
        """
        cfg = self.model_config
        reference = labels if labels is not None else fov
        if reference is not None:
            batch, size = reference.shape[0], reference.shape[-1]
        if batch is None or size is None:
            raise ValueError("make_condition needs labels, fov or an explicit batch and size")
        parts: list[torch.Tensor] = []
        if cfg.kind != "joint":
            if labels is None:
                raise ValueError(f"a '{cfg.kind}' model needs a label map")
            parts.append(self.one_hot(labels))
        if cfg.fov_channel:
            parts.append(torch.ones(batch, 1, size, size, device=self.device) if fov is None else fov.float())
        if cfg.coord_channels:
            parts.append(coordinate_channels(batch, size, self.device) if coords is None else coords.float())
        if not parts:
            return None
        return torch.cat([p.to(self.device, torch.float32) for p in parts], dim=1)

    def encode_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """The image-side condition on the grid the network denoises (a latent model's is `latent_factor` smaller).

        After `null_condition`, not before, so the null condition of a learned encoder is its encoding of
        the null condition. `area`: each latent cell sees the share of each label under it.
        """
        factor = self.model_config.latent_factor
        if factor == 1:
            return condition
        if self.model_config.condition_encoder == "learned":
            return self._encoded(condition, None, lambda: self.learned_condition_encoder(condition))
        return self._encoded(condition, None, lambda: nn.functional.avg_pool2d(condition, factor))

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, S, S) label map -> (B, K, S, S) float one-hot."""
        k = self.model_config.num_labels
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"label values must be in 0..{k - 1}, got {int(labels.min())}..{int(labels.max())}")
        return nn.functional.one_hot(labels.long(), k).permute(0, 3, 1, 2).float()

    def null_condition(self, condition: torch.Tensor | None) -> torch.Tensor | None:
        """The condition with the label map dropped (all-zero one-hot); fov and coordinates are kept.

        Geometry is not what guidance should amplify: the unconditional branch still knows where
        the fan is. A `joint` model has no label channels, so its condition is returned unchanged.
        """
        if condition is None or self.model_config.kind == "joint":
            return condition
        null = condition.clone()
        null[:, : self.model_config.num_labels] = 0.0
        return null

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Denoised sample -> (image (B, 1, H, W) in [-1, 1], mask (B, H, W) long for joint, else None)."""
        image = x[:, :1].clamp(-1.0, 1.0)
        if self.model_config.kind != "joint":
            return image, None
        return image, x[:, 1:].argmax(dim=1)


def build_model(config: ModelConfig) -> ConditionalDenoiser:
    """A freshly initialised denoiser for `config`."""
    return ConditionalDenoiser(**config.to_dict())
