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
        return self.pipe.kind

    @property
    def conditioned_on_masks(self) -> bool:
        return self.pipe.conditioned_on_masks

    @property
    def prompted(self) -> bool:
        """Text prompts steer it (a Stable Diffusion run)."""
        return bool(getattr(self.pipe, "prompted", False))

    @property
    def num_labels(self) -> int:
        return self.pipe.num_labels

    @property
    def default_guidance(self) -> float:
        """The guidance scale this run samples with unless told otherwise (what its training saved)."""
        return float(self.pipe.default_guidance_scale)

    def steer(self, prompt: str | None = None, conditioning_scale: float | None = None) -> None:
        """Check that text and the ControlNet weight can steer this model; set the weight."""
        if (prompt is not None or conditioning_scale is not None) and not self.prompted:
            raise SonosynthError(f"{self.run}: --prompt and --conditioning-scale need a Stable Diffusion run "
                                 f"(sonosynth train --base SD_DIR), not a '{self.kind}' model")
        if conditioning_scale is not None:
            if self.kind != "controlnet":
                raise SonosynthError(f"{self.run}: --conditioning-scale weighs a ControlNet; a '{self.kind}' run "
                                     "has none")
            self.pipe.conditioning_scale = float(conditioning_scale)

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
    cuda), optionally switching its sampler (`diffusion.schedulers.SCHEDULERS`) on the same noise schedule."""
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.diffusion.schedulers import make_scheduler, probe_scheduler
    from sonosynth.training.run import legacy_class_values

    run = Path(run)
    torch_device = resolve_device(device)  # before the slow load
    pipe = MaskToUltrasoundPipeline.from_pretrained(run)
    pipe.to(torch_device)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, config=pipe.scheduler.config)
        probe_scheduler(pipe.scheduler, f"{run}: --scheduler {scheduler} on the saved noise schedule")
    class_values = pipe.class_attributes
    if class_values is None:
        class_values = legacy_class_values(run, list(pipe.unet.model_config.class_cardinalities))
    size = pipe.config.sample_size
    if not size:
        raise SonosynthError(f"{run}: the saved model does not record its image size (sample_size)")
    return SynthesisModel(pipe, str(run), int(size), class_values)
