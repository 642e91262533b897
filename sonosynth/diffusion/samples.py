"""What training leaves to look at and to use: the saved pipeline and sample grids (mask | generated | real)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sonosynth.diffusion.config import TrainConfig
from sonosynth.seeds import derive_seed
from sonosynth.training.grids import write_grid


def make_pipeline(model: Any, config: TrainConfig, step: int | None = None,
                  class_values: Mapping[str, Sequence[str]] | None = None, vae: Any = None) -> Any:
    """The model with the few-step DPM++ sampler on the training noise schedule (a flow model: Euler, on its
    straight paths).

    `class_values`: each class attribute's values in index order (saved with the model, so that
    generation maps attribute values to indices without the training dataset)."""
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.diffusion.schedulers import make_scheduler

    if config.prediction_type == "flow":
        scheduler = make_scheduler("euler", "flow", config.num_train_timesteps)
    else:
        training = make_scheduler("ddpm", config.prediction_type, config.num_train_timesteps)
        scheduler = make_scheduler("dpm++", config=training.config)
    values = [[name, list(class_values[name])] for name in config.class_attributes] if class_values else None
    return MaskToUltrasoundPipeline(unet=model, scheduler=scheduler, vae=vae, sample_size=config.size,
                                    training_step=step, class_values=values)


def save_pipeline(model: Any, config: TrainConfig, out: Path, step: int | None = None,
                  class_values: Mapping[str, Sequence[str]] | None = None, vae: Any = None) -> Path:
    """Save the model as a diffusers pipeline folder, atomically (built next to `out`, then renamed)."""
    from sonosynth.files import build_folder

    pipeline = make_pipeline(model, config, step, class_values, vae)
    return build_folder(out, lambda tmp: pipeline.save_pretrained(str(tmp)))


def sample_batch(model: Any, items: list[dict[str, Any]], config: TrainConfig, seed: int,
                 vae: Any = None) -> tuple[Any, Any]:
    """Generate images for the label maps of `items` with the few-step sampler: (images, masks or None).

    Images are (B, 1, S, S) in [-1, 1]; masks are the generated ones for a joint model.
    """
    import torch

    pipeline = make_pipeline(model, config, vae=vae)
    pipeline.set_progress_bar_config(disable=True)
    labels = torch.stack([it["label"] for it in items])
    fov = torch.stack([it["fov"] for it in items])
    classes = torch.stack([it["classes"] for it in items]) if config.class_attributes else None
    joint = config.model.kind == "joint"
    output = pipeline(
        labels=None if joint else labels,
        fov=fov,
        class_labels=classes,
        num_inference_steps=config.sample_steps,
        guidance_scale=config.guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        batch_size=len(items),
        output_type="pt",
    )
    return output.images, getattr(output, "masks", None)


def write_sample_grid(model: Any, items: list[dict[str, Any]], config: TrainConfig, path: Path,
                      vae: Any = None) -> None:
    """PNG rows of mask | generated | real, written atomically."""
    import torch

    with torch.no_grad():
        images, masks = sample_batch(model, items, config, derive_seed(config.seed, "samples"), vae)
    images = _as_unit_range(images).cpu()
    k = max(1, config.model.num_labels - 1)
    rows = []
    for i, item in enumerate(items):
        label = masks[i] if masks is not None else item["label"]
        rows.append([label.float().cpu() / k, images[i, 0], (item["image"][0] + 1.0) / 2.0])
    write_grid(rows, path)


def _as_unit_range(images: Any) -> Any:
    """Pipeline "pt" images, (B, 1, H, W) in [-1, 1], as floats in [0, 1]."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
