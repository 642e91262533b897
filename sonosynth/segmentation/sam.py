"""Segment Anything as a segmenter: transformers' `SamModel` / `SamProcessor` from a local folder, the image and
prompt encoders frozen, the mask decoder fine-tuned with Dice + cross-entropy on box prompts.

The pairs are the letterboxed `size` x `size` pairs every segmenter here trains on. Each foreground label
present in an image is one box prompt (its mask's bounding box), jittered in training by 0-`box_jitter`
pixels per side at SAM's input resolution (1024 px for the published models; the source system's 0-20 px).
At test time the box comes from:
- `sam_box: unet` (default, the fair protocol): a MONAI U-Net trained in the same run on the same pairs
  predicts the structure, and its bounding box prompts SAM; saved inside the run (`box_unet/`);
- `sam_box: reference` (the source system's protocol): the reference mask's bounding box, which a real
  user does not have; only where reference masks exist (the downstream experiment), and labelled in reports.

Frozen image encoder: every training image's embedding is computed once. The run stores only the trained
mask decoder (safetensors), the base folder's path and a hash of its `config.json`; a different base is refused.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from sonosynth.errors import SonosynthError
from sonosynth.files import read_json_object
from sonosynth.segmentation.common import (
    MODEL_FILE,
    EarlyStopping,
    PairTensors,
    SegmentationConfig,
    Segmenter,
    TrainingResult,
    batch_composition,
    load_unet,
    save_segmenter,
)
from sonosynth.segmentation.unet import train_unet

BOX_UNET_DIR = "box_unet"
BOX_SOURCES = ("unet", "reference")


def require_sam(weights: str | None) -> Path:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise SonosynthError("--net sam needs the transformers package: pip install 'sonosynth[sam]'") from None
    if not weights:
        raise SonosynthError("--net sam needs --weights SAM_DIR (a local Segment Anything folder, transformers format)")
    folder = Path(weights)
    if not (folder / "config.json").is_file():
        raise SonosynthError(f"{folder}: not a Segment Anything folder (no config.json); nothing is downloaded")
    return folder


def base_hash(weights: str | Path) -> str:
    """A hash of the base model's config.json: a run refuses to load on another base."""
    return hashlib.sha256((Path(weights) / "config.json").read_bytes()).hexdigest()[:16]


@dataclass
class SamParts:
    """The loaded model and processor, and the U-Net that proposes boxes (`sam_box: unet`): SAM's `Backend`."""

    model: Any
    processor: Any
    box_unet: Segmenter | None
    name: ClassVar[str] = "sam"

    def predict(self, segmenter: Segmenter, batch: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        """Boxes from the reference masks (`sam_box: reference`) or the box U-Net."""
        return self.probabilities(batch, references if segmenter.config.sam_box == "reference" else None,
                                  segmenter.num_labels)

    def save_run(self, folder: Path, result: TrainingResult) -> None:
        save_sam(folder, result)

    @property
    def input_size(self) -> int:
        return int(self.model.config.prompt_encoder_config.image_size)

    def embeddings(self, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Frozen image-encoder embeddings of letterboxed images (N, 1, S, S) in [-1, 1]."""
        device = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                rgb = [np.repeat(_pixels(im)[..., None], 3, axis=-1) for im in images[start : start + batch_size]]
                pixel_values = self.processor(images=rgb, return_tensors="pt")["pixel_values"].to(device)
                out.append(self.model.get_image_embeddings(pixel_values).cpu())
        return torch.cat(out)

    def logits(self, embedding: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
        """Mask logits (B, size, size) for one image's embedding and its B boxes (B, 4) in letterboxed pixels."""
        device = next(self.model.parameters()).device
        scaled = boxes.float() * (self.input_size / size)
        out = self.model(image_embeddings=embedding[None].to(device), input_boxes=scaled[None].to(device),
                         multimask_output=False)
        return F.interpolate(out.pred_masks[0, :, :1], size=(size, size), mode="bilinear", align_corners=False)[:, 0]

    def probabilities(self, images: torch.Tensor, references: torch.Tensor | None, num_labels: int) -> torch.Tensor:
        """Class probabilities (N, K, S, S): each label from its box, background where no label is likely."""
        size = images.shape[-1]
        if references is None:
            if self.box_unet is None:
                raise SonosynthError("this SAM run has no box U-Net; give reference masks (sam_box: reference)")
            references = self.box_unet.probabilities(images).argmax(1)
        embeddings = self.embeddings(images)
        out = torch.zeros(len(images), num_labels, size, size)
        with torch.no_grad():
            for i, (embedding, labels) in enumerate(zip(embeddings, references, strict=True)):
                present = [k for k in range(1, num_labels) if bool((labels == k).any())]
                if present:
                    boxes = torch.stack([bounding_box(labels == k) for k in present])
                    out[i, present] = torch.sigmoid(self.logits(embedding, boxes, size)).cpu()
        out[:, 0] = 1.0 - out[:, 1:].amax(1) if num_labels > 1 else 1.0
        return out


def bounding_box(mask: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) of a boolean (H, W) mask, in pixels (SAM's box convention)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def jittered(box: torch.Tensor, jitter: float, size: int, generator: torch.Generator) -> torch.Tensor:
    """The box with each side moved by up to `jitter` pixels (uniform), kept inside the image."""
    if jitter <= 0:
        return box
    moved = box + (torch.rand(4, generator=generator) * 2 - 1) * jitter
    moved = moved.clamp(0, size)
    return torch.stack([torch.minimum(moved[0], moved[2] - 1), torch.minimum(moved[1], moved[3] - 1),
                        torch.maximum(moved[2], moved[0] + 1), torch.maximum(moved[3], moved[1] + 1)])


def load_sam(weights: str | Path, device: torch.device) -> tuple[Any, Any]:
    from transformers import SamModel, SamProcessor

    try:
        model = SamModel.from_pretrained(str(weights), local_files_only=True)
        processor = SamProcessor.from_pretrained(str(weights), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise SonosynthError(f"{weights}: cannot load Segment Anything ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), processor


def train_sam(
    config: SegmentationConfig,
    train: PairTensors,
    val: PairTensors | None,
    synthetic: PairTensors | None,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> TrainingResult:
    """The box U-Net first (same pairs), then SAM's mask decoder on box prompts; best decoder by val Dice."""
    from monai.losses import DiceCELoss

    from sonosynth.devices import resolve_device
    from sonosynth.progress import progress_bar

    weights = require_sam(config.weights)
    device = resolve_device(device)
    started = time.perf_counter()
    box_unet = train_unet(replace(config, net="unet", weights=None), train, val, synthetic, progress, device)
    model, processor = load_sam(weights, device)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("mask_decoder."))
    parts = SamParts(model, processor, box_unet.segmenter())
    pools = [(p, parts.embeddings(p.images)) for p in (train, synthetic) if p is not None and len(p)]
    n_real, n_synthetic = batch_composition(config.batch_size, config.synthetic_ratio, len(train),
                                            0 if synthetic is None else len(synthetic))
    counts = [n for n in (n_real, n_synthetic) if n] if len(pools) == 2 else [config.batch_size]
    optimizer = torch.optim.AdamW(model.mask_decoder.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    loss_fn = DiceCELoss(sigmoid=True)
    generator = torch.Generator().manual_seed(config.seed)
    jitter = config.box_jitter * config.size / parts.input_size  # in letterboxed pixels
    stopping = EarlyStopping(config.patience, lambda: _decoder_state(model), config.min_steps)
    validate = (lambda: _validation_dice(parts, val, config.num_labels)) if val is not None and len(val) else None
    bar = progress_bar(total=config.max_steps, desc="SAM decoder", disable=not progress, leave=False)
    step = 0
    for step in range(1, config.max_steps + 1):
        model.mask_decoder.train()
        losses = []
        for (pairs, embeddings), count in zip(pools, counts, strict=True):
            for index in torch.randint(0, len(pairs), (count,), generator=generator).tolist():
                labels = pairs.labels[index]
                present = [k for k in range(1, config.num_labels) if bool((labels == k).any())]
                if not present:
                    continue
                boxes = torch.stack([jittered(bounding_box(labels == k), jitter, config.size, generator)
                                     for k in present])
                logits = parts.logits(embeddings[index], boxes, config.size)
                target = torch.stack([(labels == k).float() for k in present]).to(logits.device)
                losses.append(loss_fn(logits[:, None], target[:, None]))
        loss = torch.stack(losses).mean() if losses else None
        if loss is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if stopping.step_done(step, None if loss is None else loss.item(), config, validate, bar):
            break
    bar.close()
    model.mask_decoder.load_state_dict(stopping.best_state)
    model.eval()
    return stopping.result(model, config, step, time.perf_counter() - started, backend=parts,
                           details={"box_unet": {k: v for k, v in box_unet.metrics().items() if k != "history"}})


def _decoder_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.mask_decoder.state_dict().items()}


def _validation_dice(parts: SamParts, val: PairTensors, num_labels: int) -> float:
    """Mean foreground Dice on the validation pairs with boxes from their reference masks (model selection)."""
    probabilities = parts.probabilities(val.images, val.labels, num_labels)
    predicted = probabilities.argmax(1)
    scores = []
    for k in range(1, num_labels):
        for p, t in zip(predicted == k, val.labels == k, strict=True):
            if t.any() or p.any():
                scores.append(float(2 * (p & t).sum() / (p.sum() + t.sum())))
    return float(np.mean(scores)) if scores else 0.0


def save_sam(folder: Path, result: TrainingResult) -> None:
    """The trained mask decoder, the box U-Net, and which base they belong to."""
    import json

    from safetensors.torch import save_file


    assert result.sam is not None
    save_file(_decoder_state(result.sam.model), str(folder / MODEL_FILE))
    (folder / "sam_base.json").write_text(json.dumps({"weights": str(Path(result.config.weights).resolve()),
                                                      "config_sha256": base_hash(result.config.weights)}) + "\n")
    if result.sam.box_unet is not None:
        box = result.sam.box_unet
        save_segmenter(folder / BOX_UNET_DIR, TrainingResult(box.network, box.config, 0, 0, None, [], 0.0))


def load_sam_run(folder: Path, config: SegmentationConfig, device: torch.device) -> SamParts:

    from safetensors.torch import load_file


    weights = require_sam(config.weights)
    recorded = read_json_object(folder / "sam_base.json", "base record") if (folder / "sam_base.json").is_file() else {}
    if recorded.get("config_sha256") != base_hash(weights):
        raise SonosynthError(f"{weights}: not the Segment Anything base this run was trained on "
                             f"({folder / 'sam_base.json'} records another)")
    model, processor = load_sam(weights, device)
    try:
        model.mask_decoder.load_state_dict(load_file(str(folder / MODEL_FILE)))
    except Exception as exc:  # corrupt or mismatched file
        raise SonosynthError(f"{folder / MODEL_FILE}: cannot load the mask decoder ({exc})") from None
    box_unet = load_unet(folder / BOX_UNET_DIR, device) if (folder / BOX_UNET_DIR).is_dir() else None
    return SamParts(model, processor, box_unet)


def _pixels(image: torch.Tensor) -> np.ndarray:
    return torch.round((image[0].clamp(-1, 1) + 1) * 127.5).to(torch.uint8).numpy()

