"""Builders of tiny models and runs for tests: one place, so every test's "trained run" looks the same."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
from sonosynth.diffusion.schedulers import make_scheduler
from sonosynth.models.configs import ModelConfig, build_model


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Untrained MONAI U-Nets end in a zero conv; random weights make outputs depend on the inputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


def tiny_pipeline(kind: str = "spade", num_labels: int = 2, class_values: dict[str, list[str]] | None = None,
                  size: int = 16, scheduler: str = "dpm++", training_step: int | None = 12,
                  random_weights: bool = True) -> MaskToUltrasoundPipeline:
    """A tiny pipeline as training saves it: v-prediction on the DDPM schedule, class value lists stored."""
    class_values = class_values or {}
    torch.manual_seed(0)
    unet = build_model(ModelConfig(kind=kind, size="tiny", num_labels=num_labels,
                                   class_cardinalities=[len(v) for v in class_values.values()]))
    if random_weights:
        randomize(unet)
    pipe = MaskToUltrasoundPipeline(
        unet=unet, scheduler=make_scheduler(scheduler, prediction_type="v_prediction"), sample_size=size,
        training_step=training_step, class_values=[[k, list(v)] for k, v in class_values.items()] or None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_run(out: Path, num_labels: int = 2, class_values: dict[str, list[str]] | None = None,
                  size: int = 32, kind: str = "spade", scheduler: str = "ddim", training_step: int | None = None,
                  random_weights: bool = False) -> Path:
    """A run folder as `sonosynth train` leaves it (config.yaml, the pipeline in model/), untrained."""
    pipe = tiny_pipeline(kind, num_labels, class_values, size, scheduler, training_step, random_weights)
    pipe.save_pretrained(str(out / "model"))
    (out / "config.yaml").write_text(yaml.safe_dump({"image_size": size,
                                                     "class_attributes": list(class_values or {})}))
    return out
