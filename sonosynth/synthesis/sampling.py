"""A trained generator as synthesis needs it: the pipeline, its image side and its class attributes.

The denoising loop and classifier-free guidance live once, in `MaskToUltrasoundPipeline`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sonosynth.devices import resolve_device
from sonosynth.errors import SonosynthError


@dataclass
class SynthesisModel:
    """A loaded `MaskToUltrasoundPipeline` plus what synthesis needs to drive it."""

    pipe: Any
    run: str
    size: int
    class_values: dict[str, list[str]] = field(default_factory=dict)  # attribute -> values in index order

    @property
    def class_attributes(self) -> list[str]:
        return list(self.class_values)

    @property
    def unet(self) -> Any:
        return self.pipe.unet

    @property
    def kind(self) -> str:
        return self.pipe.unet.model_config.kind

    @property
    def num_labels(self) -> int:
        return self.pipe.unet.model_config.num_labels

    def class_tensor(self, rows: Sequence[Mapping[str, str]]) -> torch.Tensor | None:
        """(B, A) class indices for the model's attributes from per-sample attribute values; -1 unknown.

        Indices follow the value lists saved with the model at training time, so a dataset with another
        value order (or no dataset at all) cannot change what a value means."""
        if not self.class_values:
            return None
        out = torch.full((len(rows), len(self.class_values)), -1, dtype=torch.long)
        for i, row in enumerate(rows):
            for j, (name, allowed) in enumerate(self.class_values.items()):
                value = row.get(name, "")
                if value in allowed:
                    out[i, j] = allowed.index(value)
        return out


def load_synthesis_model(run: str | Path, scheduler: str | None = None, device: str = "cpu") -> SynthesisModel:
    """Load a run folder (or saved model folder) written by `sonosynth train` onto `device` (auto, cpu,
    cuda), optionally switching its sampler (`dpm++`, `ddim`, `unipc`, `ddpm`) on the same noise schedule."""
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.diffusion.run import legacy_class_values
    from sonosynth.diffusion.schedulers import make_scheduler

    run = Path(run)
    torch_device = resolve_device(device)  # before the slow load
    pipe = MaskToUltrasoundPipeline.from_pretrained(run)
    pipe.to(torch_device)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, config=pipe.scheduler.config)
    class_values = pipe.class_attributes
    if class_values is None:
        class_values = legacy_class_values(run, list(pipe.unet.model_config.class_cardinalities))
    size = pipe.config.sample_size
    if not size:
        raise SonosynthError(f"{run}: the saved model does not record its image size (sample_size)")
    return SynthesisModel(pipe, str(run), int(size), class_values)
