"""Geometry shared by training and evaluation: letterboxing to a square and back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Letterbox:
    """Where an image of size (height, width) sits inside a size x size square."""

    height: int
    width: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def inner(self) -> tuple[int, int]:
        return max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale))

    @property
    def offset(self) -> tuple[int, int]:
        h, w = self.inner
        return (self.size - h) // 2, (self.size - w) // 2


def letterbox_image(image: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Resize a 2-D image (linear, aspect kept) into a zero-padded size x size float tensor."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    box = Letterbox(x.shape[0], x.shape[1], size)
    resized = F.interpolate(x[None, None], size=box.inner, mode="bilinear", align_corners=False, antialias=True)
    return _pad(resized[0, 0], box)


def letterbox_mask(mask: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Resize a 2-D label map (nearest, aspect kept) into a zero-padded size x size long tensor."""
    m = torch.as_tensor(np.asarray(mask).astype(np.int64))
    box = Letterbox(m.shape[0], m.shape[1], size)
    resized = F.interpolate(m[None, None].float(), size=box.inner, mode="nearest-exact")
    return _pad(resized[0, 0], box).long()


def unletterbox(x: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Crop a letterboxed (..., size, size) tensor back to the original (height, width)."""
    box = Letterbox(height, width, x.shape[-1])
    (top, left), (h, w) = box.offset, box.inner
    crop = x[..., top : top + h, left : left + w]
    lead = crop.shape[:-2]
    flat = crop.reshape(-1, 1, h, w).float()
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(flat, size=(height, width), mode=mode if mode != "nearest" else "nearest-exact", **kwargs)
    return out.reshape(*lead, height, width)


def _pad(x: torch.Tensor, box: Letterbox) -> torch.Tensor:
    out = torch.zeros(box.size, box.size, dtype=x.dtype)
    (top, left), (h, w) = box.offset, box.inner
    out[top : top + h, left : left + w] = x
    return out


def field_of_view(image: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """The scanner's field of view (the fan) as a boolean mask, from the image's non-zero area.

    Speckle makes single pixels inside the fan black, so the raw threshold is closed and its holes
    filled; the largest connected region is kept (text overlays outside the fan are dropped).
    """
    from scipy import ndimage

    raw = np.asarray(image) > threshold
    if not raw.any():
        return np.zeros_like(raw)
    closed = ndimage.binary_closing(raw, structure=np.ones((5, 5)), iterations=2)
    filled = ndimage.binary_fill_holes(closed)
    labels, n = ndimage.label(filled)
    if n > 1:
        sizes = ndimage.sum(filled, labels, index=range(1, n + 1))
        filled = labels == (int(np.argmax(sizes)) + 1)
    return filled
