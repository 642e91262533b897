"""The endless training stream every model is fed from: which item, in which order, with which augmentation seed.

Everything is a pure function of (seed, position), so a resumed run continues the same stream and several
processes take disjoint slices of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from sonosynth.seeds import derive_seed


class StreamBatchSampler:
    """Endless per-process batches of (dataset index, augmentation seed), from micro-batch `start`.

    The stream is a concatenation of permutations, one per epoch, seeded from (seed, epoch), so
    it is a pure function of the position and a resumed run picks up exactly where it stopped.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0, views: int = 0):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start, self.views = rank, world_size, start, views
        self._epoch, self._order = -1, np.arange(0)

    def _item(self, position: int) -> int:
        epoch = position // self.num_items
        if epoch != self._epoch:
            rng = np.random.default_rng(derive_seed(self.seed, "order", epoch))
            self._epoch, self._order = epoch, rng.permutation(self.num_items)
        return int(self._order[position % self.num_items])

    def _augment_seed(self, item: int, position: int) -> int:
        """A fresh augmentation at every position, or with `views` one of that item's `views` augmentations."""
        if not self.views:
            return derive_seed(self.seed, "augment", position)
        return derive_seed(self.seed, "augment-view", item, derive_seed(self.seed, "view", position) % self.views)

    def batch(self, micro_batch: int) -> list[tuple[int, int]]:
        first = (micro_batch * self.world_size + self.rank) * self.batch_size
        return [self._key(p) for p in range(first, first + self.batch_size)]

    def _key(self, position: int) -> tuple[int, int]:
        item = self._item(position)
        return item, self._augment_seed(item, position)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        micro_batch = self.start
        while True:
            yield self.batch(micro_batch)
            micro_batch += 1


class MixedBatchSampler:
    """Batches of two streams side by side: `first`'s items, then `second`'s with their indices after `offset`
    (one dataset after the other), so the share of each source in every batch is fixed and, both streams being
    pure functions of the position, a resumed run still continues exactly."""

    def __init__(self, first: StreamBatchSampler, second: StreamBatchSampler, offset: int):
        self.first, self.second, self.offset = first, second, offset

    def batch(self, micro_batch: int) -> list[tuple[int, int]]:
        return self.first.batch(micro_batch) + [(self.offset + i, s) for i, s in self.second.batch(micro_batch)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        micro_batch = self.first.start
        while True:
            yield self.batch(micro_batch)
            micro_batch += 1


def random_crop(item: dict[str, Any], patch_size: int, generator: Any) -> dict[str, Any]:
    """Cut the same random patch_size window from every spatial entry (coords included).

    Coordinates must already be present (computed over the full image) so the patch still knows
    its depth and lateral position.
    """
    import torch

    height, width = item["image"].shape[-2:]
    if patch_size >= height and patch_size >= width:
        return dict(item)
    top = int(torch.randint(0, height - patch_size + 1, (), generator=generator))
    left = int(torch.randint(0, width - patch_size + 1, (), generator=generator))
    out = dict(item)
    for key in ("image", "label", "fov", "coords"):
        if key in item:
            out[key] = item[key][..., top : top + patch_size, left : left + patch_size].contiguous()
    return out
