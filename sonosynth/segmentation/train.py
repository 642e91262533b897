"""Train a segmenter on real pairs, optionally with synthetic pairs: mixed at a fixed batch ratio, or
first alone then fine-tuned on the real ones (`synthetic_schedule`).

Datasets here are small (tens to hundreds of images), so all pairs are letterboxed once and kept
in memory as tensors; batches are drawn with an explicit generator, so a seed fixes the run.
Early stopping watches the validation Dice and the best weights are kept.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from sonosynth.augment import Augmentation, AugmentConfig
from sonosynth.data.format import Dataset, DatasetInfo
from sonosynth.data.validate import require_separate, require_valid
from sonosynth.devices import resolve_device
from sonosynth.errors import DataError, SonosynthError
from sonosynth.files import output_folder, prepare_output
from sonosynth.seeds import derive_seed
from sonosynth.segmentation.nets import UNET_SIZES, build_unet, min_image_size
from sonosynth.settings import Config

if TYPE_CHECKING:
    from sonosynth.segmentation.nnunet import NnUNetModel
    from sonosynth.segmentation.predict import Segmenter
    from sonosynth.segmentation.sam import SamParts

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"


NETS = ("unet", "nnunet", "sam")
SYNTHETIC_SCHEDULES = ("mix", "pretrain")


@dataclass
class SegmentationConfig(Config):
    """Everything that defines a segmenter training run (saved as SEGRUN/config.yaml).

    `net` is the segmenter: `unet` (a MONAI U-Net of size `net_size`, the default), `nnunet` (nnU-Net v2's
    `2d` configuration, trained with its own optimiser and augmentation; see `segmentation/nnunet.py`) or
    `sam` (Segment Anything from the local folder `weights`, its mask decoder fine-tuned on box prompts,
    test-time boxes from `sam_box`; see `segmentation/sam.py`).
    `augment` switches augmentation on or off. When on, `classical` chooses the kind: None is the
    `light` preset (affine + gain/gamma); an `AugmentConfig` (the `classical` preset in the
    `+classical` arms) replaces it. `flip` adds left-right flips to either.
    """

    size: int = 64
    net: str = "unet"
    net_size: str = "small"
    max_steps: int = 2000
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    val_every: int = 100
    patience: int = 5  # validations without improvement before stopping
    min_steps: int = 0  # no early stop before this many steps (a small, noisy validation set peaks early by luck)
    synthetic_ratio: float = 0.5  # fraction of each batch drawn from the --extra pairs
    # mix: every batch holds both (synthetic_ratio); pretrain: train on the --extra pairs alone until validation
    # stops improving, then fine-tune those weights on the real pairs alone (net unet)
    synthetic_schedule: str = "mix"
    augment: bool = True
    flip: bool = False  # ultrasound fans have an orientation: no flips unless asked
    seed: int = 0
    labels: dict[str, str] = field(default_factory=dict)  # filled from the training data
    classical: AugmentConfig | None = None  # strong classical augmentation instead of the light one
    weights: str | None = None  # net: sam — the local Segment Anything folder (transformers format)
    sam_box: str = "unet"  # net: sam — test-time boxes from the run's U-Net, or from the reference mask
    box_jitter: float = 20.0  # net: sam — training box jitter, pixels at SAM's input resolution

    what: ClassVar[str] = "segmenter config"

    def __post_init__(self) -> None:
        if isinstance(self.classical, dict):
            self.classical = AugmentConfig.from_dict(self.classical)
        if self.net in UNET_SIZES:  # runs saved before `net` named the segmenter held the U-Net size there
            self.net, self.net_size = "unet", self.net
        self.labels = {str(k): str(v) for k, v in (self.labels or {}).items()}
        self.validate()

    @property
    def num_labels(self) -> int:
        return max(int(k) for k in self.labels) + 1

    def validate(self) -> None:
        if self.net not in NETS:
            raise SonosynthError(f"unknown segmenter '{self.net}' (choose from {', '.join(NETS)})")
        if self.net_size not in UNET_SIZES:
            raise SonosynthError(f"unknown network size '{self.net_size}' (choose from {', '.join(UNET_SIZES)})")
        smallest = min_image_size(self.net_size) if self.net == "unet" else 16
        if self.size < smallest or self.size % (smallest // 4):
            raise SonosynthError(
                f"size {self.size} does not suit the '{self.net_size if self.net == 'unet' else self.net}' network "
                f"(at least {smallest} and a multiple of {smallest // 4})"
            )
        if not 0.0 <= self.synthetic_ratio <= 1.0:
            raise SonosynthError(f"synthetic ratio must be within [0, 1], got {self.synthetic_ratio}")
        if self.synthetic_schedule not in SYNTHETIC_SCHEDULES:
            raise SonosynthError(f"unknown synthetic schedule '{self.synthetic_schedule}' "
                                 f"(choose from {', '.join(SYNTHETIC_SCHEDULES)})")
        if self.synthetic_schedule != "mix" and self.net != "unet":
            raise SonosynthError(f"--synthetic-schedule {self.synthetic_schedule} is for --net unet only")
        if self.batch_size < 1 or self.max_steps < 1 or self.val_every < 1:
            raise SonosynthError("batch size, steps and validation interval must be positive")
        if self.classical is not None and not self.augment:
            raise SonosynthError("classical augmentation needs augmentation on (drop --no-augment or --classical)")
        if self.net != "unet" and self.classical is not None:
            raise SonosynthError(f"--classical applies to --net unet only (got --net {self.net})")
        if self.net == "sam" and not self.weights:
            raise SonosynthError("--net sam needs --weights SAM_DIR (a local Segment Anything folder)")
        if self.sam_box not in ("unet", "reference"):
            raise SonosynthError(f"--sam-box must be unet or reference, got '{self.sam_box}'")


@dataclass
class PairTensors:
    """Letterboxed pairs held in memory: images (N, 1, S, S) in [-1, 1], labels (N, S, S) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, indices: list[int] | np.ndarray) -> PairTensors:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return PairTensors(self.images[index], self.labels[index])

    @classmethod
    def empty(cls, size: int) -> PairTensors:
        return cls(torch.zeros(0, 1, size, size), torch.zeros(0, size, size, dtype=torch.long))


def load_pairs(dataset: Dataset, size: int, progress: bool = False) -> PairTensors:
    """Letterbox every pair of `dataset` to size x size (the same preprocessing as LetterboxedPairs)."""
    from sonosynth.data.transforms import letterbox_mask
    from sonosynth.progress import progress_bar
    from sonosynth.segmentation.predict import image_to_model

    if len(dataset) == 0:
        return PairTensors.empty(size)
    images, labels = [], []
    for sample in progress_bar(dataset, total=len(dataset), desc=f"loading {dataset.root.name}", disable=not progress):
        images.append(image_to_model(sample.image, size))
        labels.append(letterbox_mask(sample.mask, size))
    return PairTensors(torch.stack(images), torch.stack(labels))


def segmenter_augmentation(config: SegmentationConfig) -> Augmentation | None:
    """The augmentation `config` asks for: None, the light preset or its classical ranges, flips added."""
    if not config.augment:
        return None
    chosen = config.classical if config.classical is not None else AugmentConfig.preset("light")
    if config.flip:
        chosen = replace(chosen, flip_prob=0.5)
    return Augmentation(chosen, config.size)


@dataclass
class TrainingResult:
    model: torch.nn.Module
    config: SegmentationConfig
    steps: int
    best_step: int
    best_val_dice: float | None
    history: list[dict[str, float]]
    seconds: float
    nnunet: NnUNetModel | None = None  # nnU-Net's plans, for `net: nnunet`
    sam: SamParts | None = None  # model, processor and box U-Net, for `net: sam`
    details: dict[str, Any] = field(default_factory=dict)  # what the segmenter chose itself (nnU-Net's batch, ...)

    def metrics(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "best_step": self.best_step,
            "best_val_dice": self.best_val_dice,
            "seconds": round(self.seconds, 2),
            "history": self.history,
            **self.details,
        }

    def segmenter(self) -> Segmenter:
        from sonosynth.segmentation.predict import Segmenter

        return Segmenter(self.model, self.config, self.nnunet, self.sam)


@dataclass
class EarlyStopping:
    """Validation checks of one training run: the best score, its step and a snapshot of the weights then.

    `stop` once `patience` checks in a row bring no better score. Without validation scores the last
    weights are the result. Shared by every segmenter trained in a loop of ours (the U-Net, SAM's decoder).
    """

    patience: int
    snapshot: Callable[[], dict[str, torch.Tensor]]
    min_steps: int = 0  # `stop` waits for this many steps whatever the checks say
    best: float = -1.0
    best_step: int = 0
    bad_checks: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    running_loss: float = 0.0
    steps: int = 0  # training steps taken so far
    best_state: dict[str, torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.best_state = self.snapshot()

    def check(self, step: int, loss: float, score: float | None) -> dict[str, float]:
        entry = {"step": step, "loss": round(loss, 5)}
        if score is not None:
            entry["val_dice"] = round(score, 5)
            if score > self.best:
                self.best, self.best_step, self.bad_checks, self.best_state = score, step, 0, self.snapshot()
            else:
                self.bad_checks += 1
        else:
            self.best_state, self.best_step = self.snapshot(), step
        self.history.append(entry)
        return entry

    def step_done(self, step: int, loss: float | None, config: SegmentationConfig,
                  validate: Callable[[], float] | None, bar: Any) -> bool:
        """Record a training step (its loss, if any); at a validation step check the score; True: stop now."""
        if loss is not None:
            self.running_loss = 0.9 * self.running_loss + 0.1 * loss if step > 1 else loss
        bar.update(1)
        if step % config.val_every and step != config.max_steps:
            return False
        bar.set_postfix(self.check(step, self.running_loss, None if validate is None else validate()))
        return self.stop

    @property
    def stop(self) -> bool:
        return self.bad_checks >= self.patience and self.steps >= self.min_steps

    def result(self, model: Any, config: SegmentationConfig, steps: int, seconds: float, **more: Any) -> TrainingResult:
        return TrainingResult(model=model, config=config, steps=steps, best_step=self.best_step,
                              best_val_dice=None if self.best < 0 else self.best, history=self.history,
                              seconds=seconds, **more)


def batch_composition(batch_size: int, synthetic_ratio: float, n_real: int, n_extra: int) -> tuple[int, int]:
    """How many real and how many extra (synthetic) pairs each batch holds.

    The ratio applies when both pools exist; with only one pool every slot comes from it.
    """
    if n_extra == 0:
        return batch_size, 0
    if n_real == 0:
        return 0, batch_size
    extra = min(max(round(batch_size * synthetic_ratio), 0), batch_size)
    return batch_size - extra, extra


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


def train_segmenter(
    config: SegmentationConfig,
    train: PairTensors,
    val: PairTensors | None = None,
    extra: PairTensors | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    workdir: Path | None = None,
) -> TrainingResult:
    """Train the segmenter `config.net` names; `extra` pairs fill `synthetic_ratio` of each batch, or with
    `synthetic_schedule: pretrain` train the U-Net alone first (its pretraining history under `details`).

    The U-Net trains here with Dice + cross-entropy. nnU-Net (`segmentation/nnunet.py`) trains in its
    own loop, its folders under `workdir` (a temporary folder when None) unless the environment names them.

    Pairs stay in host memory and batches are drawn there with a CPU generator, each pair augmented
    with its own seed (from the run seed, the step and its slot), so the batches (and thus the run) do
    not depend on the device; only the network runs on `device`.
    """
    config.validate()
    extra = extra if extra is not None and len(extra) else None
    if len(train) == 0 and extra is None:
        raise SonosynthError("no training pairs: the real training set is empty and no --extra data was given")
    if config.net == "nnunet":
        from sonosynth.segmentation.nnunet import train_nnunet

        started = time.perf_counter()
        network, plans, summary = train_nnunet(config, train, val, extra, workdir, progress, device)
        return TrainingResult(model=network, config=config, steps=summary["steps"], best_step=summary["best_step"],
                              best_val_dice=summary["best_val_dice"], history=summary["history"],
                              seconds=time.perf_counter() - started, nnunet=plans,
                              details={"nnunet": summary["nnunet"]})
    if config.net == "sam":
        from sonosynth.segmentation.sam import train_sam

        return train_sam(config, train, val, extra, progress, device)
    with torch.random.fork_rng(devices=[]):  # MONAI layers initialise from the global generator
        torch.manual_seed(config.seed)
        model = build_unet(config.net_size, config.num_labels)
    model.to(resolve_device(device))
    validate = (lambda: validation_dice(model, val, config.num_labels)) if val is not None and len(val) else None
    started = time.perf_counter()
    if config.synthetic_schedule == "pretrain" and extra is not None and len(train):
        pretraining = _fit(model, config, PairTensors.empty(config.size), extra, validate, progress, "pretrain")
        model.load_state_dict(pretraining.best_state)
        stopping = _fit(model, config, train, None, validate, progress, "fine-tune")
        details = {"pretrain": {"steps": pretraining.steps, "best_step": pretraining.best_step,
                                "best_val_dice": pretraining.best, "history": pretraining.history}}
    else:
        stopping, details = _fit(model, config, train, extra, validate, progress, "segmenter"), {}
    model.load_state_dict(stopping.best_state)
    model.eval()
    return stopping.result(model, config, stopping.steps, time.perf_counter() - started, details=details)


def _fit(model: torch.nn.Module, config: SegmentationConfig, train: PairTensors, extra: PairTensors | None,
         validate: Callable[[], float] | None, progress: bool, phase: str) -> EarlyStopping:
    """One early-stopped training run of `model` (a fresh optimiser) on batches of `train` and `extra`.

    Batches come from a CPU generator seeded by the run seed and the phase, so a pretraining phase does
    not shift the draws of the phase after it.
    """
    from monai.losses import DiceCELoss

    from sonosynth.progress import progress_bar

    model_device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    seed = config.seed if phase != "pretrain" else derive_seed(config.seed, "pretrain")
    generator = torch.Generator().manual_seed(seed)
    augmentation = segmenter_augmentation(config)
    n_real, n_extra = batch_composition(
        config.batch_size, config.synthetic_ratio, len(train), 0 if extra is None else len(extra)
    )
    stopping = EarlyStopping(config.patience, lambda: {k: v.detach().clone() for k, v in model.state_dict().items()},
                             config.min_steps)
    bar = progress_bar(total=config.max_steps, desc=phase, disable=not progress, leave=False)
    model.train()
    for step in range(1, config.max_steps + 1):
        parts_img, parts_lab = [], []
        for pairs, count in ((train, n_real), (extra, n_extra)):
            if count and pairs is not None and len(pairs):
                index = torch.randint(0, len(pairs), (count,), generator=generator)
                parts_img.append(pairs.images[index])
                parts_lab.append(pairs.labels[index])
        images, labels = torch.cat(parts_img), torch.cat(parts_lab)
        if augmentation is not None:
            seeds = [derive_seed(seed, "augment", step, slot) for slot in range(len(images))]
            images, labels = augmentation.batch(images, labels, seeds)
        images, labels = images.to(model_device), labels.to(model_device)
        loss = loss_fn(model(images), labels[:, None])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stopping.steps = step
        if stopping.step_done(step, loss.item(), config, validate, bar):
            break
    bar.close()
    return stopping


def save_segmenter(out: str | Path, result: TrainingResult, extra_metrics: dict[str, Any] | None = None,
                   overwrite: bool = False) -> Path:
    """Write SEGRUN (model.safetensors, config.yaml, metrics.json) atomically."""
    from safetensors.torch import save_model

    out = prepare_output(out, overwrite)
    with output_folder(out, overwrite) as tmp:
        if result.sam is not None:
            from sonosynth.segmentation.sam import save_sam

            save_sam(tmp, result)  # the trained decoder and the box U-Net only, not the base model
        else:
            save_model(result.model, str(tmp / MODEL_FILE), force_contiguous=True)  # nnU-Net shares tensors
        result.config.save(tmp / CONFIG_FILE)
        if result.nnunet is not None:
            result.nnunet.save(tmp)
        metrics = {**result.metrics(), **(extra_metrics or {})}
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return out


def real_splits(dataset: Dataset, val_fraction: float = 0.15, seed: int = 0, auto_split: bool = False
                ) -> tuple[Dataset, Dataset, Dataset]:
    """(train, val, test) from the manifest's split column, else (with `auto_split`, which the user asked
    for) a deterministic subject-wise split.

    A dataset without any split is refused unless `auto_split`: then it is cut subject-wise with
    `sonosynth.data.splits` (no subject in two parts; `val_fraction` each for validation and test). A
    dataset with train rows but no val rows gets its validation subjects carved out of train the same way.
    """
    from sonosynth.data.splits import SplitConfig, assign_splits

    if {r.split for r in dataset.records} <= {""} and not auto_split:
        raise DataError(f"{dataset.root}: has no train/val/test split: run `sonosynth data split {dataset.root}` "
                        "(the split then stays the same for every command), or pass --auto-split to accept an "
                        "automatic subject-wise split for this command")
    if {r.split for r in dataset.records} <= {""}:
        records = assign_splits(dataset.records, SplitConfig(val=val_fraction, test=val_fraction, seed=seed))
        dataset = Dataset(dataset.root, dataset.info, records)
    train, val, test = dataset.subset("train"), dataset.subset("val"), dataset.subset("test")
    if len(val) == 0 and len(train.subjects) >= 2:
        carved = assign_splits(train.records, SplitConfig(val=val_fraction, test=0.0, seed=seed))
        train = Dataset(dataset.root, dataset.info, [r for r in carved if r.split == "train"])
        val = Dataset(dataset.root, dataset.info, [r for r in carved if r.split == "val"])
    return train, val, test


def check_compatible_labels(real: Dataset, other: Dataset) -> None:
    """Synthetic pairs must use the same label values, with the same names, as the real data they are mixed
    with: a label 1 that means another structure would teach the segmenter the wrong thing without a word."""
    def names(info: DatasetInfo) -> dict[str, str]:
        return {value: name.strip().lower() for value, name in info.labels.items()}

    if names(real.info) != names(other.info):
        raise DataError(
            f"{other.root}/dataset.json: labels {other.info.labels} do not match {real.root}'s labels "
            f"{real.info.labels} (same values, same names)"
        )


def train_from_folders(
    dataset_path: str | Path,
    out: str | Path,
    config: SegmentationConfig,
    extra_path: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    device: str = "cpu",
    auto_split: bool = False,
) -> Path:
    """`sonosynth segment train`: train on DATASET's train split (+ EXTRA), early-stop on its val split.

    EXTRA (synthetic pairs, usually) must name its labels as DATASET does and may hold none of DATASET's
    validation or test pairs (`require_separate`); a DATASET without splits needs `auto_split`."""
    out = prepare_output(out, overwrite, inputs=[dataset_path, extra_path])
    resolve_device(device)
    dataset = Dataset.open(dataset_path)
    train, val, test = real_splits(dataset, seed=config.seed, auto_split=auto_split)
    if len(train) == 0 and extra_path is None:
        raise DataError(f"{dataset.root}: no pairs in split 'train' to train on (give --extra pairs, or split it)")
    extra_ds = Dataset.open(extra_path) if extra_path is not None else None
    if extra_ds is not None:
        check_compatible_labels(dataset, extra_ds)
    config.labels = dict(dataset.info.labels)
    config.validate()
    require_valid(train, "training pairs")
    require_valid(val, "validation pairs")
    if extra_ds is not None:
        require_valid(extra_ds, "extra pairs")
        require_separate(Dataset(dataset.root, dataset.info, [*val.records, *test.records]), extra_ds)
    train_pairs = load_pairs(train, config.size, progress)
    val_pairs = load_pairs(val, config.size, progress)
    extra_pairs = load_pairs(extra_ds, config.size, progress) if extra_ds is not None else None
    result = train_segmenter(config, train_pairs, val_pairs, extra_pairs, progress=progress, device=device)
    info = {
        "dataset": str(Path(dataset_path).resolve()),
        "extra": None if extra_path is None else str(Path(extra_path).resolve()),
        "n_train": len(train_pairs),
        "n_val": len(val_pairs),
        "n_extra": 0 if extra_pairs is None else len(extra_pairs),
        "torch": torch.__version__,
    }
    return save_segmenter(out, result, info, overwrite=overwrite)
