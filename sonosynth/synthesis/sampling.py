"""A trained generator as synthesis needs it: the pipeline, its image side and its class attributes.

The denoising loop and classifier-free guidance live once, in `MaskToUltrasoundPipeline`."""

from __future__ import annotations

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


def sample_seeds(seed: int, n: int) -> list[int]:
    """Independent per-sample seeds from one seed (recorded in the manifest for regeneration)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)]
