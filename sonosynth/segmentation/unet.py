"""The MONAI U-Net segmenter: Dice + cross-entropy on batches of real and synthetic pairs, early-stopped on validation.

Pairs stay in host memory and batches are drawn there with a CPU generator, each pair augmented with its own seed
(from the run seed, the step and its slot), so the batches (and thus the run) do not depend on the device; only the
network runs on `device`. Synthetic pairs fill `synthetic_ratio` of each batch, or with `synthetic_schedule:
pretrain` train the U-Net alone first (its pretraining history under `details`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sonosynth.devices import resolve_device
from sonosynth.seeds import derive_seed
from sonosynth.segmentation.common import (
    EarlyStopping,
    PairTensors,
    SegmentationConfig,
    TrainingResult,
    batch_composition,
    early_stopped_steps,
    segmenter_augmentation,
)
from sonosynth.segmentation.nets import build_unet


def train_unet(config: SegmentationConfig, train: PairTensors, val: PairTensors | None, synthetic: PairTensors | None,
               progress: bool = True, device: str | torch.device = "cpu") -> TrainingResult:
    """Train a U-Net of `config.net_size` (`synthetic`: None or non-empty); the best weights by validation Dice."""
    with torch.random.fork_rng(devices=[]):  # MONAI layers initialise from the global generator
        torch.manual_seed(config.seed)
        model = build_unet(config.net_size, config.num_labels)
    model.to(resolve_device(device))
    validate = (lambda: validation_dice(model, val, config.num_labels)) if val is not None and len(val) else None
    started = time.perf_counter()
    if config.synthetic_schedule == "pretrain" and synthetic is not None and len(train):
        pretraining = _fit(model, config, PairTensors.empty(config.size), synthetic, validate, progress, "pretrain")
        model.load_state_dict(pretraining.best_state)
        stopping = _fit(model, config, train, None, validate, progress, "fine-tune")
        details = {"pretrain": {"steps": pretraining.steps, "best_step": pretraining.best_step,
                                "best_val_dice": pretraining.best, "history": pretraining.history}}
    else:
        stopping, details = _fit(model, config, train, synthetic, validate, progress, "segmenter"), {}
    model.load_state_dict(stopping.best_state)
    model.eval()
    return stopping.result(model, config, stopping.steps, time.perf_counter() - started, details=details)



def validation_dice(model: torch.nn.Module, pairs: PairTensors, num_labels: int, batch_size: int = 16) -> float:
    """Mean foreground Dice at the training size (labels absent from both maps are ignored)."""
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            logits = model(pairs.images[start : start + batch_size].to(device))
            pred = F.one_hot(logits.argmax(1).cpu(), num_labels).permute(0, 3, 1, 2)
            truth = F.one_hot(pairs.labels[start : start + batch_size], num_labels).permute(0, 3, 1, 2)
            metric(pred, truth)
    per_label = metric.aggregate()
    model.train()
    value = float(torch.nanmean(per_label)) if per_label.numel() else float("nan")
    return value if math.isfinite(value) else 0.0


def _fit(model: torch.nn.Module, config: SegmentationConfig, train: PairTensors, synthetic: PairTensors | None,
         validate: Callable[[], float] | None, progress: bool, phase: str) -> EarlyStopping:
    """One early-stopped training run of `model` (a fresh optimiser) on batches of `train` and `synthetic`.

    Batches come from a CPU generator seeded by the run seed and the phase, so a pretraining phase does
    not shift the draws of the phase after it.
    """
    from monai.losses import DiceCELoss

    model_device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    seed = config.seed if phase != "pretrain" else derive_seed(config.seed, "pretrain")
    generator = torch.Generator().manual_seed(seed)
    augmentation = segmenter_augmentation(config)
    n_real, n_synthetic = batch_composition(
        config.batch_size, config.synthetic_ratio, len(train), 0 if synthetic is None else len(synthetic)
    )
    stopping = EarlyStopping(config.patience, lambda: {k: v.detach().clone() for k, v in model.state_dict().items()},
                             config.min_steps)

    def step_loss(step: int) -> torch.Tensor:
        parts_img, parts_lab = [], []
        for pairs, count in ((train, n_real), (synthetic, n_synthetic)):
            if count and pairs is not None and len(pairs):
                index = torch.randint(0, len(pairs), (count,), generator=generator)
                parts_img.append(pairs.images[index])
                parts_lab.append(pairs.labels[index])
        images, labels = torch.cat(parts_img), torch.cat(parts_lab)
        if augmentation is not None:
            seeds = [derive_seed(seed, "augment", step, slot) for slot in range(len(images))]
            images, labels = augmentation.batch(images, labels, seeds)
        images, labels = images.to(model_device), labels.to(model_device)
        return loss_fn(model(images), labels[:, None])

    return early_stopped_steps(model, optimizer, stopping, config, validate, step_loss, progress, phase)
