"""Apply a trained segmenter: label maps at each image's original size.

The network sees images letterboxed to its training size; its class probabilities are cropped
back and resized to the original grid before the argmax, so metrics (and head circumference in
mm) are computed in the image's own pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sonosynth.data.format import DATASET_JSON, Dataset
from sonosynth.data.imageio import pixels_to_unit, read_image, write_png
from sonosynth.data.transforms import letterbox_image, letterbox_mask, unletterbox
from sonosynth.devices import resolve_device
from sonosynth.errors import DataError, SonosynthError
from sonosynth.files import output_folder, prepare_output
from sonosynth.segmentation.nets import build_unet
from sonosynth.segmentation.train import CONFIG_FILE, MODEL_FILE, SegmentationConfig

if TYPE_CHECKING:
    from sonosynth.segmentation.nnunet import NnUNetModel
    from sonosynth.segmentation.sam import SamParts


@dataclass
class Segmenter:
    """A trained network and the settings it was trained with (and nnU-Net's plans, for nnU-Net)."""

    network: torch.nn.Module
    config: SegmentationConfig
    nnunet: NnUNetModel | None = None
    sam: SamParts | None = None
    _predictor: Any = field(default=None, init=False, repr=False)

    def probabilities(self, batch: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor:
        """Class probabilities (N, K, S, S) of letterboxed images (N, 1, S, S) in [-1, 1].

        `references` (N, S, S) label maps give SAM its boxes (`sam_box: reference`); the others ignore them.
        """
        if self.sam is not None:
            return self.sam.probabilities(batch, references if self.config.sam_box == "reference" else None,
                                          self.num_labels)
        if self.nnunet is None:
            return torch.softmax(self.network(batch.to(self.device)), dim=1).cpu()
        from sonosynth.segmentation.nnunet import nnunet_probabilities

        if self._predictor is None:  # nnU-Net's own sliding-window predictor, with its test-time mirroring
            self._predictor = self.nnunet.predictor(self.network, self.device)
        return nnunet_probabilities(self._predictor, batch)

    @property
    def labels(self) -> dict[str, str]:
        return self.config.labels

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device


def image_to_model(image: np.ndarray, size: int) -> torch.Tensor:
    """A 2-D image as the network's (1, size, size) input in [-1, 1], padding black.

    uint8/uint16 arrays are scaled by their full range (as stored on disk); float arrays are taken
    to be in model space already ([-1, 1]).
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise DataError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.dtype == np.uint8 or image.dtype == np.uint16:
        unit = pixels_to_unit(image)
    elif np.issubdtype(image.dtype, np.floating):
        unit = (np.clip(image.astype(np.float32), -1.0, 1.0) + 1.0) / 2.0
    else:
        raise DataError(f"images must be uint8, uint16 or float in [-1, 1], got {image.dtype}")
    # Letterboxing pads with 0 in [0, 2] space; shifting by -1 makes padding black (-1).
    return letterbox_image(unit * 2.0, size)[None] - 1.0


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> Segmenter:
    """Load SEGRUN (config.yaml + model.safetensors) written by `sonosynth segment train` onto `device`."""
    from safetensors.torch import load_model

    device = resolve_device(device)
    path = Path(path)
    config_path, model_path = path / CONFIG_FILE, path / MODEL_FILE
    for required in (config_path, model_path):
        if not required.is_file():
            raise SonosynthError(f"{required}: missing; not a segmenter run folder")
    config = SegmentationConfig.from_yaml(config_path)
    nnunet = None
    if config.net == "sam":
        from sonosynth.segmentation.sam import load_sam_run

        sam = load_sam_run(path, config, device)
        return Segmenter(sam.model, config, sam=sam)
    if config.net == "nnunet":
        from sonosynth.segmentation.nnunet import NnUNetModel, require_nnunet

        require_nnunet()
        nnunet = NnUNetModel.load(path)
        network = nnunet.build_network()
    else:
        network = build_unet(config.net_size, config.num_labels)
    try:
        load_model(network, str(model_path))
    except Exception as exc:  # safetensors/torch raise several types for corrupt or mismatched files
        raise SonosynthError(f"{model_path}: cannot load weights ({exc})") from None
    network.to(device).eval()
    return Segmenter(network, config, nnunet)


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
