"""Apply a trained segmenter: label maps at each image's original size.

The network sees images letterboxed to its training size; its class probabilities are cropped
back and resized to the original grid before the argmax, so metrics (and head circumference in
mm) are computed in the image's own pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sonosynth.data.format import DATASET_JSON, Dataset
from sonosynth.data.imageio import read_image, write_png
from sonosynth.data.transforms import letterbox_mask, unletterbox
from sonosynth.devices import resolve_device
from sonosynth.errors import DataError
from sonosynth.files import output_folder, prepare_output
from sonosynth.segmentation.common import Segmenter, image_to_model, load_unet, load_weights, read_run_config


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> Segmenter:
    """Load SEGRUN (config.yaml + model.safetensors) written by `sonosynth segment train` onto `device`."""
    device, path = resolve_device(device), Path(path)
    config = read_run_config(path)
    if config.net == "sam":
        from sonosynth.segmentation.sam import load_sam_run

        sam = load_sam_run(path, config, device)
        return Segmenter(sam.model, config, sam)
    if config.net == "nnunet":
        from sonosynth.segmentation.nnunet import NnUNetModel, require_nnunet

        require_nnunet()
        nnunet = NnUNetModel.load(path)
        return Segmenter(load_weights(nnunet.build_network(), path, device), config, nnunet)
    return load_unet(path, device)


def predict_probabilities(
    segmenter: Segmenter, images: Sequence[np.ndarray], batch_size: int = 16,
    references: Sequence[np.ndarray] | None = None,
) -> list[torch.Tensor]:
    """Per-image class probabilities (K, H, W) at each image's original size (`references`: see `probabilities`)."""
    size = segmenter.config.size
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            masks = None if references is None else torch.stack(
                [letterbox_mask(m, size) for m in references[start : start + batch_size]])
            probs = segmenter.probabilities(torch.stack([image_to_model(im, size) for im in chunk]), masks)
            for image, p in zip(chunk, probs, strict=True):
                h, w = np.asarray(image).shape
                out.append(unletterbox(p, h, w, mode="bilinear"))
    return out


def predict_masks(segmenter: Segmenter, images: Sequence[np.ndarray], batch_size: int = 16,
                  references: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Label maps (uint8, same size as each input image) predicted by `segmenter`."""
    probabilities = predict_probabilities(segmenter, images, batch_size, references)
    return [p.argmax(0).to(torch.uint8).numpy() for p in probabilities]


def list_images(source: str | Path) -> list[tuple[str, Path]]:
    """(name, path) of the images to segment: a dataset folder, a folder of PNGs, or one PNG."""
    source = Path(source)
    if source.is_file():
        return [(source.stem, source)]
    if not source.is_dir():
        raise DataError(f"{source}: no such file or folder")
    if (source / DATASET_JSON).is_file():
        dataset = Dataset.open(source)
        return [(r.id, dataset.path_of(r)) for r in dataset.records]
    found = sorted(p for p in source.iterdir() if p.suffix.lower() == ".png")
    if not found:
        raise DataError(f"{source}: no PNG images found")
    return [(p.stem, p) for p in found]


def predict_folder(
    segrun: str | Path, source: str | Path, out: str | Path, overwrite: bool = False, progress: bool = True,
    device: str = "cpu",
) -> Path:
    """`sonosynth segment predict`: write OUT/<name>.png label maps at the original image sizes."""
    from sonosynth.progress import progress_bar

    out = prepare_output(out, overwrite, inputs=[segrun, source])
    segmenter = load_segmenter(segrun, device)
    items = list_images(source)
    with output_folder(out, overwrite) as tmp:
        for name, path in progress_bar(items, desc="segmenting", disable=not progress):
            (mask,) = predict_masks(segmenter, [read_image(path)])
            write_png(tmp / f"{name}.png", mask)
    return out
