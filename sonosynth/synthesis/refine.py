"""Two-stage (coarse-to-fine) sampling: a cheap first draft, then an SDEdit-style refinement.

Stage 1 samples with few steps. Stage 2 re-noises the draft to an intermediate time (`strength`
of the way back to pure noise) and denoises it again with the same mask, optionally on a finer
grid (a fully convolutional denoiser accepts any multiple of its downsampling factor). The
refinement pass can fix details the draft got wrong while the draft fixes the layout.

Cost is counted in network evaluations (NFE): `stage1_steps + round(stage2_steps * strength)`.
Whether it beats one-stage sampling at equal NFE is measured by `benchmarks/bench_two_stage.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from sonosynth.errors import SonosynthError
from sonosynth.settings import Config


@dataclass
class TwoStageConfig(Config):
    what: ClassVar[str] = "two-stage sampling"

    stage1_steps: int = 10
    stage2_steps: int = 20
    strength: float = 0.5
    stage2_size: int | None = None  # None: same grid as stage 1
    guidance_scale: float = 1.5

    def __post_init__(self) -> None:
        if self.stage1_steps < 1 or self.stage2_steps < 1:
            raise SonosynthError("two-stage sampling: steps must be at least 1")
        if not 0.0 < self.strength <= 1.0:
            raise SonosynthError(f"two-stage sampling: strength must be in (0, 1], got {self.strength}")

    @property
    def stage2_evaluations(self) -> int:
        return max(1, round(self.stage2_steps * self.strength))

    @property
    def evaluations(self) -> int:
        """Network evaluations per image (each doubled internally by classifier-free guidance)."""
        return self.stage1_steps + self.stage2_evaluations



def refine(model, draft: torch.Tensor, labels: torch.Tensor, fov: torch.Tensor | None,
           class_labels: torch.Tensor | None, steps: int, strength: float, guidance_scale: float,
           generators: Sequence[torch.Generator]) -> torch.Tensor:
    """SDEdit: noise `draft` ((B, 1, S, S) in [-1, 1]) to `strength` of the schedule, denoise with
    the mask over the last `round(steps * strength)` steps of a `steps`-step schedule (the pipeline's
    img2img entry into its one loop)."""
    return model.pipe(labels=labels, fov=fov, class_labels=class_labels, image=draft, strength=strength,
                      num_inference_steps=steps, guidance_scale=guidance_scale, generator=list(generators),
                      output_type="pt").images


def two_stage_sample(model, labels: torch.Tensor, fov: torch.Tensor | None, class_labels: torch.Tensor | None,
                     config: TwoStageConfig, generators: Sequence[torch.Generator],
                     labels_stage2: torch.Tensor | None = None, fov_stage2: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, S2, S2) images in [-1, 1]. `labels`: (B, S, S); for a finer stage 2, pass the masks at
    that size as `labels_stage2` (else the stage-1 masks are upsampled, nearest)."""
    if not model.conditioned_on_masks:
        raise SonosynthError(f"two-stage sampling refines an image for a given mask; a '{model.kind}' model has none")
    generators = list(generators)
    draft = model.pipe(labels=labels, fov=fov, class_labels=class_labels, num_inference_steps=config.stage1_steps,
                       guidance_scale=config.guidance_scale, generator=generators, output_type="pt").images
    size2 = config.stage2_size or labels.shape[-1]
    if size2 != labels.shape[-1]:
        factor = model.pipe.downsampling_factor
        if size2 % factor:
            raise SonosynthError(f"stage-2 size {size2} must be a multiple of {factor}")
        draft = F.interpolate(draft, size=(size2, size2), mode="bilinear", align_corners=False)
        if labels_stage2 is None:
            labels_stage2 = F.interpolate(labels[:, None].float(), size=(size2, size2), mode="nearest-exact")[:, 0]
        if fov_stage2 is None and fov is not None:
            fov_stage2 = F.interpolate(fov.float(), size=(size2, size2), mode="nearest-exact")
    else:
        labels_stage2, fov_stage2 = labels, fov
    return refine(model, draft, labels_stage2.long(), fov_stage2, class_labels, config.stage2_steps, config.strength,
                  config.guidance_scale, generators)
