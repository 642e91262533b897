"""Between an image's own pixel grid and the model's square grid.

Synthesis works at the model's resolution: a source pair is shrunk (aspect kept) so its longer
side equals the model's side, and is padded to a square only when handed to the model. Synthetic
pairs are written at that reduced size with the pixel size scaled to match, so every number in
mm (head circumference) stays true and images are never blurry upsamples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sonosynth.data.imageio import peak_value, unit_to_pixels
from sonosynth.data.transforms import Letterbox, field_of_view, letterbox_image, letterbox_mask


def reduced_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """The (height, width) an image of `shape` has inside a `size` x `size` letterbox."""
    return Letterbox(shape[0], shape[1], size).inner


def crop_square(square: torch.Tensor | np.ndarray, shape: tuple[int, int], size: int | None = None) -> np.ndarray:
    """The part of a letterboxed (S, S) square that holds an array of `shape` (the padding removed)."""
    square = torch.as_tensor(np.asarray(square)) if not isinstance(square, torch.Tensor) else square
    size = size or square.shape[-1]
    box = Letterbox(shape[0], shape[1], size)
    (top, left), (h, w) = box.offset, box.inner
    return square[top : top + h, left : left + w].numpy()


def reduce_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A label map shrunk (nearest, aspect kept) so that its longer side is `size`."""
    return crop_square(letterbox_mask(mask, size), mask.shape, size).astype(np.uint8)


def reduce_image(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8/uint16 image shrunk (antialiased linear) so its longer side is `size`, same dtype."""
    image = np.asarray(image)
    resized = crop_square(letterbox_image(image.astype(np.float32), size), image.shape, size)
    return np.clip(np.rint(resized), 0, peak_value(image.dtype)).astype(image.dtype)


def reduced_spacing(spacing_mm: float | None, shape: tuple[int, int], size: int) -> float | None:
    """Pixel size after `reduce_*` (pixels get bigger by the shrink factor)."""
    if spacing_mm is None:
        return None
    return float(spacing_mm) * shape[1] / reduced_shape(shape, size)[1]


def reduced_fov(image: np.ndarray, size: int) -> np.ndarray:
    """The field of view of a full-size image, on the reduced grid (uint8 0/1)."""
    return reduce_mask(field_of_view(image).astype(np.uint8), size)


def to_square(arrays: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """Pad reduced 2-D arrays (longer side == size) into a (B, size, size) tensor, centred."""
    out = torch.zeros(len(arrays), size, size, dtype=torch.float32)
    for i, a in enumerate(arrays):
        box = Letterbox(a.shape[0], a.shape[1], size)
        (top, left), (h, w) = box.offset, box.inner
        if (h, w) != a.shape:
            raise ValueError(f"array of shape {a.shape} is not reduced to side {size}")
        out[i, top : top + h, left : left + w] = torch.as_tensor(a.astype(np.float32))
    return out


def from_square(images: torch.Tensor | np.ndarray, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Crop (B, S, S) images in [0, 1] back to each reduced shape, as uint8."""
    images = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    size = images.shape[-1]
    crops = [crop_square(images[i].float().cpu(), shape, size) for i, shape in enumerate(shapes)]
    return [unit_to_pixels(c) for c in crops]
