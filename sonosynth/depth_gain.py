"""`RandDepthGaind`: the one augmentation MONAI lacks, a gain that changes with depth only.

Ultrasound loses signal with depth and scanners compensate with a time-gain-compensation curve
that differs between machines and operators; a linear gain from the top row to the bottom one is
its simplest form. (MONAI's `RandBiasFieldd` varies the gain in both directions.) A module of its own
so that it can be pickled into data-loader workers, and imported only when augmentation is built.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.transforms import MapTransform, RandomizableTransform


class RandDepthGaind(RandomizableTransform, MapTransform):
    """Multiply the image by 1 + d * depth, depth from -0.5 (top row) to 0.5 (bottom), d drawn from `gain_range`."""

    def __init__(self, keys: Any, prob: float, gain_range: tuple[float, float]):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.gain_range = gain_range

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize(None)
        slope = float(self.R.uniform(*self.gain_range))  # drawn whether applied or not: a fixed stream
        out = dict(data)
        if self._do_transform:
            for key in self.key_iterator(out):
                image = torch.as_tensor(out[key])
                depth = torch.linspace(-0.5, 0.5, image.shape[-2], dtype=image.dtype).view(-1, 1)
                out[key] = image * (1.0 + slope * depth)
        return out
