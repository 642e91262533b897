"""A torch Dataset over a dataset folder: letterboxed square tensors ready for a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sonosynth.data.format import Dataset
from sonosynth.data.imageio import pixels_to_unit
from sonosynth.data.transforms import field_of_view, letterbox_image, letterbox_mask


class LetterboxedPairs(torch.utils.data.Dataset):
    """Pairs letterboxed to `size` x `size` (linear for images, nearest for masks, aspect kept).

    Each item is a dict:
    - `image`: float32 (1, S, S) in [-1, 1] (padding is -1, i.e. black)
    - `label`: int64 (S, S) label map
    - `fov`: float32 (1, S, S), 1 inside the scanner's field of view
    - `classes`: int64 (A,) index of each categorical attribute in `class_attributes` (-1 unknown)
    - `index`: position in the dataset
    Decoded pairs are cached in memory after first use (datasets here are small).
    """

    def __init__(
        self,
        dataset: Dataset,
        size: int,
        class_attributes: Sequence[str] = (),
        augment: Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]] | None = None,
        cache: bool = True,
    ):
        self.dataset = dataset
        self.size = size
        self.class_attributes = list(class_attributes)
        categorical = dataset.info.categorical_attributes
        for name in self.class_attributes:
            if name not in categorical:
                raise ValueError(f"{dataset.root}: '{name}' is not a categorical attribute ({list(categorical)})")
        self.class_values = {name: categorical[name] for name in self.class_attributes}
        self.augment = augment
        self._cache: dict[int, dict[str, torch.Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.dataset)

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self.dataset[index]
        fov = field_of_view(sample.image)
        item = {
            # Letterboxing pads with 0 in [0, 2] space; shifting by -1 makes padding black (-1).
            "image": letterbox_image(pixels_to_unit(sample.image) * 2.0, self.size)[None] - 1.0,
            "label": letterbox_mask(sample.mask, self.size),
            "fov": letterbox_mask(fov.astype(np.uint8), self.size)[None].float(),
        }
        item["classes"] = torch.tensor(
            [self._class_index(name, sample.record.attributes.get(name, "")) for name in self.class_attributes],
            dtype=torch.long,
        )
        if self._cache is not None:
            self._cache[index] = item
        return item

    def _class_index(self, name: str, value: str) -> int:
        values = self.class_values[name]
        return values.index(value) if value in values else -1

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self._load(index))
        if self.augment is not None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
            item = self.augment(item, generator)
        item["index"] = index
        return item


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def unannotated_image_paths(folder: str | Path) -> list[Path]:
    """The images of scans without masks: a dataset folder's images (its masks are never read), or every image file
    directly in a plain folder, in name order; none is a one-line error."""
    from sonosynth.data.format import MANIFEST_CSV
    from sonosynth.errors import DataError

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder of unannotated scans")
    if (root / MANIFEST_CSV).is_file():
        dataset = Dataset.open(root)
        paths = [dataset.path_of(r, "image") for r in dataset.records]
    else:
        paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"{root}: no images of unannotated scans ({', '.join(IMAGE_SUFFIXES)})")
    return paths


class LetterboxedImages(torch.utils.data.Dataset):
    """Scans without masks as `LetterboxedPairs` items: the letterboxed image and its field of view, an all-background
    `label` (nothing is known of it: a model must not be conditioned on it) and unknown `classes` (-1).

    Every image is read here, so an unreadable one fails before a run writes anything."""

    def __init__(self, paths: Sequence[Path], size: int, num_class_attributes: int = 0):
        from sonosynth.data.imageio import read_image

        self.paths, self.size = list(paths), size
        self.items = []
        for path in self.paths:
            image = read_image(path)
            self.items.append({
                "image": letterbox_image(pixels_to_unit(image) * 2.0, size)[None] - 1.0,
                "label": torch.zeros(size, size, dtype=torch.long),
                "fov": letterbox_mask(field_of_view(image).astype(np.uint8), size)[None].float(),
                "classes": torch.full((num_class_attributes,), -1, dtype=torch.long),
            })

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.items[index], "index": index}
