"""Sample grids: the pictures every training run writes to RUN/samples/ (mask | generated | real, input |
reconstruction), one PNG per checkpointed step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sonosynth.files import atomic_path


def write_grid(rows: Sequence[Sequence[Any]], path: Path) -> None:
    """A PNG of panels ((H, W) tensors in [0, 1]) in rows, each framed in grey, written atomically."""
    import torch
    from PIL import Image

    lines = [torch.cat([torch.nn.functional.pad(c, (1, 1, 1, 1), value=0.5) for c in row], dim=1) for row in rows]
    grid = (torch.cat(lines, dim=0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp)
