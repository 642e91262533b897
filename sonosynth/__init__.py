"""sonosynth: synthetic ultrasound images paired with segmentation masks.

Heavy modules (torch models, diffusers pipelines) load lazily so the CLI starts fast.
"""

from __future__ import annotations

from typing import Any

from sonosynth.data.format import Dataset, DatasetInfo, DatasetWriter
from sonosynth.errors import DataError, SonosynthError

__version__ = "0.1.0"

_LAZY = {
    "MaskToUltrasoundPipeline": "sonosynth.diffusion.pipeline",
    "ConditionalDenoiser": "sonosynth.models.denoiser",
}

__all__ = ["Dataset", "DatasetInfo", "DatasetWriter", "DataError", "SonosynthError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sonosynth' has no attribute {name!r}")
