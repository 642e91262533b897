"""Denoising networks conditioned on label maps (spade, concat, joint) and their size presets."""

from __future__ import annotations

from typing import Any

from sonosynth.models.configs import KINDS, SIZE_PRESETS, ModelConfig, build_model

__all__ = ["KINDS", "SIZE_PRESETS", "ModelConfig", "build_model", "ConditionalDenoiser"]


def __getattr__(name: str) -> Any:
    if name == "ConditionalDenoiser":  # imports torch: only on use
        from sonosynth.models.denoiser import ConditionalDenoiser

        return ConditionalDenoiser
    raise AttributeError(f"module 'sonosynth.models' has no attribute {name!r}")
