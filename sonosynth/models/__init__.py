"""Denoising networks conditioned on label maps (spade, concat, joint) and their size presets."""

from __future__ import annotations

from typing import Any

from sonosynth.models.configs import KINDS, SIZE_PRESETS, ModelConfig

__all__ = ["KINDS", "SIZE_PRESETS", "ModelConfig", "build_model", "ConditionalDenoiser"]


def __getattr__(name: str) -> Any:
    if name in ("ConditionalDenoiser", "build_model"):  # they import torch: only on use
        from sonosynth.models import denoiser

        return getattr(denoiser, name)
    raise AttributeError(f"module 'sonosynth.models' has no attribute {name!r}")
