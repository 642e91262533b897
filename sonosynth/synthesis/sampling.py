"""A trained generator as synthesis needs it: the pipeline, its image side, its class attributes,
and a denoising loop that can start from any time step (two-stage refinement and editing both
start from a partly noised image, which the pipeline's own call cannot do)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sonosynth.devices import resolve_device
from sonosynth.errors import SonosynthError


@dataclass
class SynthesisModel:
    """A loaded `MaskToUltrasoundPipeline` plus what synthesis needs to drive it."""

    pipe: Any
    run: str
    size: int
    class_attributes: list[str]
    class_values: dict[str, list[str]] | None = None  # value order of the training dataset, when readable

    @property
    def unet(self) -> Any:
        return self.pipe.unet

    @property
    def kind(self) -> str:
        return self.pipe.unet.model_config.kind

    @property
    def num_labels(self) -> int:
        return self.pipe.unet.model_config.num_labels

    def class_tensor(self, rows: Sequence[Mapping[str, str]],
                     values: Mapping[str, Sequence[str]] | None = None) -> torch.Tensor | None:
        """(B, A) class indices for the model's attributes from per-sample attribute values; -1 unknown.

        Indices follow each attribute's value order in the training dataset (`class_values`); `values`
        (e.g. the source dataset's, usually the same dataset) is the fallback when that is unknown."""
        if not self.class_attributes:
            return None
        values = self.class_values or values or {}
        out = torch.full((len(rows), len(self.class_attributes)), -1, dtype=torch.long)
        for i, row in enumerate(rows):
            for j, name in enumerate(self.class_attributes):
                allowed = list(values.get(name, []))
                value = row.get(name, "")
                if value in allowed:
                    out[i, j] = allowed.index(value)
        return out


def load_synthesis_model(run: str | Path, scheduler: str | None = None, device: str = "cpu") -> SynthesisModel:
    """Load a run folder (or saved model folder) written by `sonosynth train` onto `device` (auto, cpu,
    cuda), optionally switching its sampler (`dpm++`, `ddim`, `unipc`, `ddpm`) on the same noise schedule."""
    import yaml

    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.diffusion.schedulers import make_scheduler

    run = Path(run)
    torch_device = resolve_device(device)  # before the slow load
    pipe = MaskToUltrasoundPipeline.from_pretrained(run)
    pipe.to(torch_device)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, config=pipe.scheduler.config)
    class_attributes: list[str] = []
    class_values = None
    config_yaml = run / "config.yaml"
    if config_yaml.is_file():
        try:
            data = yaml.safe_load(config_yaml.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SonosynthError(f"{config_yaml}: invalid YAML ({exc})") from None
        class_attributes = [str(a) for a in data.get("class_attributes") or []]
        class_values = _training_values(data.get("dataset"), class_attributes)
    cardinalities = list(pipe.unet.model_config.class_cardinalities)
    if len(class_attributes) != len(cardinalities):
        if cardinalities:
            raise SonosynthError(f"{run}: the model has {len(cardinalities)} class attributes but config.yaml names "
                                 f"{class_attributes}; pass the run folder, not its model/ folder")
        class_attributes = []
    size = pipe.config.sample_size
    if not size:
        raise SonosynthError(f"{run}: the saved model does not record its image size (sample_size)")
    return SynthesisModel(pipe, str(run), int(size), class_attributes, class_values)


def _training_values(dataset: str | None, names: Sequence[str]) -> dict[str, list[str]] | None:
    """Each class attribute's values in the training dataset's order (None if it cannot be read)."""
    from sonosynth.data.format import Dataset

    if not names or not dataset:
        return None
    try:
        categorical = Dataset.open(dataset).info.categorical_attributes
    except SonosynthError:
        return None
    return {name: categorical.get(name, []) for name in names}


def prediction_to_epsilon(prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor,
                          prediction_type: str) -> torch.Tensor:
    """The noise a prediction implies, whatever the model was trained to predict."""
    alpha_bar = alpha_bar.to(x_t.dtype)
    if prediction_type == "epsilon":
        return prediction
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * prediction + (1 - alpha_bar).sqrt() * x_t
    if prediction_type == "sample":
        return (x_t - alpha_bar.sqrt() * prediction) / (1 - alpha_bar).sqrt()
    raise SonosynthError(f"unknown prediction type '{prediction_type}'")


class GuidedDenoiser:
    """The model's classifier-free-guided prediction for one conditioning, reusable every step."""

    def __init__(self, model: SynthesisModel, labels: torch.Tensor | None, fov: torch.Tensor | None,
                 class_labels: torch.Tensor | None, guidance_scale: float):
        unet = model.unet
        reference = labels if labels is not None else fov
        batch, side = reference.shape[0], reference.shape[-1]
        condition = unet.make_condition(None if labels is None else labels.to(unet.device),
                                        fov=None if fov is None else fov.to(unet.device), size=side, batch=batch)
        if unet.model_config.class_cardinalities:
            class_labels = unet._known_or_null(
                unet.null_class_labels.expand(batch, -1) if class_labels is None else class_labels.to(unet.device))
        else:
            class_labels = None
        self.unet = unet
        self.guide = guidance_scale != 1.0 and (model.kind != "joint" or class_labels is not None)
        self.scale = guidance_scale
        if self.guide:
            null_classes = None if class_labels is None else unet.null_class_labels.expand(batch, -1)
            self.condition = None if condition is None else torch.cat([condition, unet.null_condition(condition)])
            self.classes = None if class_labels is None else torch.cat([class_labels, null_classes])
        else:
            self.condition, self.classes = condition, class_labels

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_in = torch.cat([x, x]) if self.guide else x
        prediction = self.unet(x_in, t, self.condition, self.classes)
        if self.guide:
            conditional, unconditional = prediction.chunk(2)
            prediction = unconditional + self.scale * (conditional - unconditional)
        return prediction


def denoise_from(model: SynthesisModel, denoiser: GuidedDenoiser, x: torch.Tensor, timesteps: torch.Tensor,
                 torch_generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """Run the pipeline's scheduler over `timesteps` (a tail of its schedule) starting from `x`."""
    scheduler = model.pipe.scheduler
    step_kwargs = {"generator": torch_generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in timesteps:
        x_in = scheduler.scale_model_input(x, t)
        x = scheduler.step(denoiser(x_in, t), t, x, **step_kwargs).prev_sample
    return x


def per_sample_noise(shape: tuple[int, ...], generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Gaussian noise, image i drawn from generator i only (so results do not depend on batching)."""
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generators])


def sample_seeds(seed: int, n: int) -> list[int]:
    """Independent per-sample seeds from one seed (recorded in the manifest for regeneration)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)]
