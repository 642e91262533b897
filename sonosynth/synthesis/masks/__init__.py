"""Mask sources for synthesis: deformed real masks and a statistical shape model, both held to the
anatomy rules (connectivity, holes, nesting) of the training masks."""

from sonosynth.synthesis.masks.deform import DeformConfig, DeformedMask, deform_mask, random_warp
from sonosynth.synthesis.masks.shape_model import Pose, SampledShape, ShapeModel, ShapeModelConfig
from sonosynth.synthesis.masks.topology import BORDER, AnatomyRules, contacts, enforce_topology

__all__ = [
    "BORDER",
    "AnatomyRules",
    "DeformConfig",
    "DeformedMask",
    "Pose",
    "SampledShape",
    "ShapeModel",
    "ShapeModelConfig",
    "contacts",
    "deform_mask",
    "enforce_topology",
    "random_warp",
]
