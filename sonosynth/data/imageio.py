"""Reading and writing the PNG/medical files of a dataset, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sonosynth.errors import DataError


def peak_value(dtype: np.dtype | type) -> float:
    """The white of an image type: 65535 for uint16, 255 for uint8."""
    return 65535.0 if np.dtype(dtype) == np.uint16 else 255.0


def pixels_to_unit(image: np.ndarray) -> np.ndarray:
    """uint8/uint16 pixels -> float32 in [0, 1] (models work on `2 * unit - 1`, in [-1, 1])."""
    return np.asarray(image).astype(np.float32) / peak_value(np.asarray(image).dtype)


def unit_to_pixels(unit: np.ndarray, dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """Floats in [0, 1] -> pixels of `dtype` (rounded, clipped): the inverse of `pixels_to_unit`."""
    peak = peak_value(dtype)
    return np.clip(np.rint(np.asarray(unit) * peak), 0, peak).astype(dtype)


def read_image(path: str | Path, label_map: bool = False) -> np.ndarray:
    """Read a grayscale image as a 2-D uint8/uint16 array (RGB-stored grayscale is converted).

    Transparency is refused: where alpha hides pixels, what the file shows and what it stores differ (a
    mask drawn in the alpha channel would read as empty). With `label_map`, a palette image's labels are its
    palette indices (the convention of palette label maps), said here rather than guessed from colours."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im.load()
            _refuse_transparency(im, path)
            if label_map and im.mode == "P":
                arr = np.asarray(im)
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.uint16)
            elif im.mode == "L":
                arr = np.asarray(im)
            elif im.mode in ("1", "P", "LA", "RGB", "RGBA", "CMYK", "YCbCr"):
                arr = _rgb_to_gray(np.asarray(im.convert("RGB")))
            else:
                arr = np.asarray(im.convert("L"))
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from None
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(f"{path}: expected a 2-D grayscale image, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _refuse_transparency(im: Image.Image, path: Path) -> None:
    alpha = None
    if im.mode in ("LA", "RGBA", "PA"):
        alpha = np.asarray(im.getchannel("A"))
    elif "transparency" in im.info:
        alpha = np.asarray(im.convert("RGBA").getchannel("A"))
    if alpha is not None and alpha.size and int(alpha.min()) < 255:
        raise DataError(f"{path}: has transparent pixels (an alpha channel); store the values as gray levels "
                        "without transparency")


def _rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    # Grayscale stored as RGB has equal channels: keep them exactly instead of re-weighting.
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].copy()
    weights = np.array([0.299, 0.587, 0.114])
    return np.clip(np.rint(rgb.astype(np.float64) @ weights), 0, 255).astype(np.uint8)


def read_label_map(path: str | Path) -> np.ndarray:
    """Read a mask as an integer label map (uint8); a palette mask's labels are its palette indices."""
    arr = read_image(path, label_map=True)
    if arr.max(initial=0) > 255:
        raise DataError(f"{path}: label map has values above 255")
    return arr.astype(np.uint8)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a 2-D uint8 or uint16 array as a PNG."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise DataError(f"{path}: can only write 2-D arrays, got shape {array.shape}")
    if array.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: can only write uint8/uint16 arrays, got {array.dtype}")
    # zlib level 3 instead of PIL's 6: about 4x faster on speckle images for ~10% larger files.
    try:
        Image.fromarray(array).save(path, format="PNG", compress_level=3)
    except OSError as exc:  # a full disk or a file-size limit: the file named, for `files.writing` to report
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
