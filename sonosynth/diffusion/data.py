"""The training data stream: which pairs, in which order, augmented how, and what the model is fed.

Everything is a pure function of (seed, position), so a resumed run continues the same stream.
Classifier-free-guidance dropping lives here, not in the model: it is how training uses the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from sonosynth.diffusion.config import TrainConfig
from sonosynth.errors import SonosynthError
from sonosynth.training.stream import random_crop


class TrainingItems:
    """Letterboxed pairs with coordinates, augmentation and patch cropping, indexed by (index, seed); with
    `unannotated` scans (`LetterboxedImages`), their items follow the pairs' (index len(pairs) + i), marked
    `annotated` False so that `training_inputs` gives them the null condition."""

    def __init__(self, pairs: Any, config: TrainConfig, unannotated: Any = None):
        from sonosynth.augment import Augmentation

        self.pairs, self.config, self.unannotated = pairs, config, unannotated
        self.augmentation = Augmentation(config.augment, config.size)

    def __len__(self) -> int:
        return len(self.pairs) + (0 if self.unannotated is None else len(self.unannotated))

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        """The item as it is; `collate` augments it (whole image, before any patch is cut) and cuts its patch,
        both from its seed."""
        import torch

        from sonosynth.models.denoiser import coordinate_channels

        index, seed = key
        annotated = index < len(self.pairs)
        item = dict(self.pairs[index] if annotated else self.unannotated[index - len(self.pairs)])
        item["annotated"] = torch.tensor(annotated)
        item["key"] = torch.tensor([index, seed])  # what `LatentCache` files the item's latent under
        if self.config.model.coord_channels:  # where a pixel lies in the output image: never warped
            item["coords"] = coordinate_channels(1, self.config.size)[0]
        return item

    def loader(self, sampler: Any, num_workers: int = 0) -> Any:
        """The DataLoader over `sampler`'s batches of (index, seed), batches made by `collate`."""
        import torch

        return torch.utils.data.DataLoader(self, batch_sampler=sampler, collate_fn=self.collate,
                                           num_workers=num_workers, persistent_workers=num_workers > 0)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The DataLoader's batch: the items augmented (at once where the preset has a batched path) and cut, each
        from its own seed, so an item does not depend on the batch it came in."""
        import torch
        from torch.utils.data import default_collate

        seeds = [int(it["key"][1]) for it in items]
        images = torch.stack([it["image"] for it in items])
        masks = torch.stack([torch.cat([it["label"][None].to(it["fov"].dtype), it["fov"]]) for it in items])
        images, masks = self.augmentation.batch_masks(images, masks, seeds)
        return default_collate([self._patch({**it, "image": image, "label": mask[0].round().long(), "fov": mask[1:]},
                                            seed)
                                for it, image, mask, seed in zip(items, images, masks, seeds, strict=True)])

    def _patch(self, item: dict[str, Any], seed: int) -> dict[str, Any]:
        import torch

        if self.config.patch_size and self.config.patch_size < self.config.size:
            return random_crop(item, self.config.patch_size, torch.Generator().manual_seed(seed))
        return item


class LatentCache:
    """A latent model's training latents, encoded once per (item, augmentation view) and then reused.

    At 256 px on a CPU the encoder costs about four denoiser steps per batch (measured: 1.18 s against
    0.30 s at batch 8), so with `latent_views` augmented versions of each image it runs
    len(pairs) x views times in all instead of at every step. Each image is encoded alone, so its latent
    does not depend on the batch it came in (exact resume). Memory: one latent per key (4 x 64 x 64
    floats, 64 KiB, at 256 px).
    """

    def __init__(self, vae: Any):
        self.vae, self.latents = vae, {}

    def __call__(self, images: Any, keys: Any) -> Any:
        import torch

        out = []
        for image, key in zip(images, map(tuple, keys.tolist()), strict=True):
            if key not in self.latents:
                self.latents[key] = encode_latents(self.vae, image[None])[0]
            out.append(self.latents[key])
        return torch.stack(out)


def encode_latents(vae: Any, images: Any) -> Any:
    """(B, C, h, w) scaled latents (the posterior's mode: deterministic) of (B, 1, H, W) images in [-1, 1]."""
    import torch

    with torch.no_grad():
        return vae.encode(images.to(vae.dtype)).latent_dist.mode().float() * vae.config.scaling_factor


def training_stream(num_pairs: int, num_unannotated: int, config: TrainConfig, rank: int, world: int, start: int,
                    views: int) -> Any:
    """The batches of (index, augmentation seed) a run trains on: the pairs' stream, or with unannotated scans
    `unannotated_fraction` of each batch from their own stream (indices after the pairs')."""
    from sonosynth.seeds import derive_seed
    from sonosynth.training.stream import MixedBatchSampler, StreamBatchSampler

    if not num_unannotated:
        return StreamBatchSampler(num_pairs, config.batch_size, config.seed, rank, world, start=start, views=views)
    scans = min(config.batch_size - 1, max(1, round(config.batch_size * config.unannotated_fraction)))
    return MixedBatchSampler(
        StreamBatchSampler(num_pairs, config.batch_size - scans, config.seed, rank, world, start=start, views=views),
        StreamBatchSampler(num_unannotated, scans, derive_seed(config.seed, "unannotated"), rank, world, start=start,
                           views=views),
        offset=num_pairs)


def unannotated_rows(batch: dict[str, Any]) -> Any:
    """The batch's rows from unannotated scans (a bool tensor), or None when every row is a pair."""
    annotated = batch["annotated"]
    return None if bool(annotated.all()) else ~annotated


def open_unannotated(config: TrainConfig) -> Any:
    """`LetterboxedImages` of the run's unannotated scans (`config.unannotated`), or None."""
    from sonosynth.data.torch_dataset import LetterboxedImages, unannotated_image_paths

    if not config.unannotated:
        return None
    if config.model.kind == "joint":
        raise SonosynthError("unannotated scans train the mask-free branch of a mask-conditioned model: a joint model "
                             "draws the mask itself and would learn empty masks from them")
    return LetterboxedImages(unannotated_image_paths(config.unannotated), config.size, len(config.class_attributes))


def open_training_pairs(config: TrainConfig) -> tuple[Any, str]:
    """(LetterboxedPairs over the training records, fingerprint of those records and of any unannotated scans)."""
    from sonosynth.data.format import MANIFEST_CSV, Dataset
    from sonosynth.data.torch_dataset import LetterboxedPairs, unannotated_image_paths
    from sonosynth.data.validate import require_valid

    if not config.dataset:
        raise SonosynthError("no dataset given")
    chosen = Dataset.open(config.dataset).select(config.split, what="pairs to train on", trains=True)
    require_valid(chosen, "pairs to train on")  # before any output exists
    try:
        pairs = LetterboxedPairs(chosen, config.size, class_attributes=config.class_attributes)
    except ValueError as exc:
        raise SonosynthError(str(exc)) from None
    digest = hashlib.sha256((Path(config.dataset) / MANIFEST_CSV).read_bytes())
    digest.update(",".join(r.id for r in chosen.records).encode())
    if config.unannotated:
        digest.update(",".join(p.name for p in unannotated_image_paths(config.unannotated)).encode())
    return pairs, digest.hexdigest()[:16]


def resolve_model_config(config: TrainConfig, pairs: Any, vae: Any = None) -> TrainConfig:
    """Fill what the data (and the autoencoder, for a latent model) decides: number of labels, attribute
    cardinalities, coordinate channels, latent channels and factor."""
    from sonosynth.autoencoder.model import latent_factor

    info = pairs.dataset.info
    model = replace(
        config.model,
        num_labels=info.num_labels,
        class_cardinalities=[len(pairs.class_values[name]) for name in config.class_attributes],
        coord_channels=config.model.coord_channels or bool(config.patch_size and config.patch_size < config.size),
        latent_channels=None if vae is None else int(vae.config.latent_channels),
        latent_factor=1 if vae is None else latent_factor(vae),
    )
    if model.condition_encoder == "learned" and vae is None:
        raise SonosynthError("model.condition_encoder 'learned' is for latent models (--autoencoder AE): a pixel "
                             "model sees its condition at full resolution already")
    factor = model.downsampling_factor
    for name in ("size", "patch_size"):
        value = getattr(config, name)
        if value is not None and value % factor:
            raise SonosynthError(f"{name}={value} must be a multiple of {factor} for the '{model.size}' model")
    return replace(config, model=model)


def training_inputs(model: Any, batch: dict[str, Any], vae: Any = None, latents: LatentCache | None = None
                    ) -> tuple[Any, Any, Any]:
    """(x0, condition, class_labels) from a batch of `LetterboxedPairs` items, on the model's device.

    For a joint model x0 is the image with the one-hot mask scaled to [-1, 1]: it learns both; for a
    latent model (`vae`) it is the image's scaled latent, from `latents` when given."""
    import torch

    device = model.device
    image = batch["image"].to(device, torch.float32)
    if latents is not None:
        image = latents(image, batch["key"])
    elif vae is not None:
        image = encode_latents(vae, image)
    labels = batch["label"].to(device)
    fov, coords = batch.get("fov"), batch.get("coords")
    condition = model.make_condition(labels, fov=None if fov is None else fov.to(device),
                                     coords=None if coords is None else coords.to(device))
    cfg = model.model_config
    x0 = torch.cat([image, model.one_hot(labels) * 2.0 - 1.0], dim=1) if cfg.kind == "joint" else image
    class_labels = None
    if cfg.class_cardinalities:
        classes = batch.get("classes")
        if classes is None or classes.shape[-1] != len(cfg.class_cardinalities):
            got = None if classes is None else tuple(classes.shape)
            raise ValueError(f"the model expects {len(cfg.class_cardinalities)} class attributes, batch has {got}")
        null = model.null_class_labels.expand_as(classes)
        class_labels = torch.where(classes.to(device) < 0, null, classes.to(device).long())
    return x0, condition, class_labels


def drop_conditions(model: Any, condition: Any, class_labels: Any, drop_prob: float, generator: Any = None,
                    unannotated: Any = None) -> tuple[Any, Any]:
    """Classifier-free guidance training: replace mask and classes by their null values, each with `drop_prob`;
    the rows `unannotated` marks (scans without masks; their classes are already unknown, i.e. null) always.

    Mask and classes are dropped independently, so sampling may guide either or both.
    """
    import torch

    if drop_prob <= 0 and unannotated is None:
        return condition, class_labels
    if condition is not None and model.model_config.kind != "joint":
        drop = torch.rand(condition.shape[0], generator=generator, device=condition.device) < drop_prob
        if unannotated is not None:
            drop = drop | unannotated.to(condition.device)
        condition = torch.where(drop[:, None, None, None], model.null_condition(condition), condition)
    if class_labels is not None and class_labels.numel():
        drop = torch.rand(class_labels.shape[0], generator=generator, device=class_labels.device) < drop_prob
        null = model.null_class_labels.to(class_labels.device).expand_as(class_labels)
        class_labels = torch.where(drop[:, None], null, class_labels)
    return condition, class_labels
