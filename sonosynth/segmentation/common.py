"""What every segmenter shares (the U-Net, nnU-Net, Segment Anything): its settings, the letterboxed pairs it trains
on, early stopping, the trained `Segmenter`, and the run folder it is saved in and loaded from.

The three segmenters sit above this module behind one interface, `Backend`: a backend (nnU-Net's plans, SAM's
parts) brings its own prediction and its own files; a plain U-Net needs none. So the code that trains, saves,
loads and applies segmenters names no segmenter family, and `train.py` / `predict.py` only dispatch on `net`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from sonosynth.augment import Augmentation, AugmentConfig
from sonosynth.data.format import Dataset
from sonosynth.data.imageio import pixels_to_unit
from sonosynth.data.transforms import letterbox_image
from sonosynth.devices import resolve_device
from sonosynth.errors import DataError, SonosynthError
from sonosynth.files import output_folder, prepare_output
from sonosynth.segmentation.nets import UNET_SIZES, build_unet, min_image_size
from sonosynth.settings import Config

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
    synthetic_ratio: float = 0.5  # fraction of each batch drawn from the --synthetic pairs
    # mix: every batch holds both (synthetic_ratio); pretrain: train on the --synthetic pairs alone until validation
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

    if len(dataset) == 0:
        return PairTensors.empty(size)
    images, labels = [], []
    for sample in progress_bar(dataset, total=len(dataset), desc=f"loading {dataset.root.name}", disable=not progress):
        images.append(image_to_model(sample.image, size))
        labels.append(letterbox_mask(sample.mask, size))
    return PairTensors(torch.stack(images), torch.stack(labels))



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


def segmenter_augmentation(config: SegmentationConfig) -> Augmentation | None:
    """The augmentation `config` asks for: None, the light preset or its classical ranges, flips added."""
    if not config.augment:
        return None
    chosen = config.classical if config.classical is not None else AugmentConfig.preset("light")
    if config.flip:
        chosen = replace(chosen, flip_prob=0.5)
    return Augmentation(chosen, config.size)


class Backend(Protocol):
    """A segmenter family's own part of a trained segmenter (nnU-Net's plans, SAM's model and box U-Net)."""

    name: str  # the `net` it serves

    def predict(self, segmenter: Segmenter, batch: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        """Class probabilities (N, K, S, S) of letterboxed images (N, 1, S, S) in [-1, 1]."""

    def save_run(self, folder: Path, result: TrainingResult) -> None:
        """Write the weights and whatever else loading needs into the run folder being built."""


@dataclass
class Segmenter:
    """A trained network, the settings it was trained with, and its family's `Backend` (None: a plain U-Net)."""

    network: torch.nn.Module
    config: SegmentationConfig
    backend: Backend | None = None

    def probabilities(self, batch: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor:
        """Class probabilities (N, K, S, S) of letterboxed images (N, 1, S, S) in [-1, 1].

        `references` (N, S, S) label maps give SAM its boxes (`sam_box: reference`); the others ignore them.
        """
        if self.backend is not None:
            return self.backend.predict(self, batch, references)
        return torch.softmax(self.network(batch.to(self.device)), dim=1).cpu()

    @property
    def labels(self) -> dict[str, str]:
        return self.config.labels

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device


@dataclass
class TrainingResult:
    model: torch.nn.Module
    config: SegmentationConfig
    steps: int
    best_step: int
    best_val_dice: float | None
    history: list[dict[str, float]]
    seconds: float
    backend: Backend | None = None  # nnU-Net's plans (`net: nnunet`), SAM's parts (`net: sam`)
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
        return Segmenter(self.model, self.config, self.backend)

    @property
    def sam(self) -> Any:
        """SAM's parts (model, processor, box U-Net) for `net: sam`, else None."""
        return self.backend if self.backend is not None and self.backend.name == "sam" else None


@dataclass
class EarlyStopping:
    """Validation checks of one training run: the best score, its step and a snapshot of the weights then.

    `stop` once `patience` checks in a row bring no better score. Without validation scores the last
    weights are the result. Shared by every network trained in a loop of ours (the U-Net, SAM's decoder, the
    classifiers, whose score is named `val_balanced_accuracy`).
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
    score_name: str = "val_dice"  # the history's name of the validation score
    best_state: dict[str, torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.best_state = self.snapshot()

    def check(self, step: int, loss: float, score: float | None) -> dict[str, float]:
        entry = {"step": step, "loss": round(loss, 5)}
        if score is not None:
            entry[self.score_name] = round(score, 5)
            if score > self.best:
                self.best, self.best_step, self.bad_checks, self.best_state = score, step, 0, self.snapshot()
            else:
                self.bad_checks += 1
        else:
            self.best_state, self.best_step = self.snapshot(), step
        self.history.append(entry)
        return entry

    def step_done(self, step: int, loss: float | None, config: Any, validate: Callable[[], float] | None,
                  bar: Any) -> bool:
        """Record a training step (its loss, if any); at a validation step (`config.val_every`, and at
        `config.max_steps`) check the score; True: stop now."""
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


def early_stopped_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, stopping: EarlyStopping,
                        config: Any, validate: Callable[[], float] | None, step_loss: Callable[[int], torch.Tensor],
                        progress: bool, desc: str) -> EarlyStopping:
    """The supervised loop the U-Net and the classifiers train with: `step_loss(step)` (the step's batch through
    the model), an optimizer step, a validation check every `config.val_every` steps, until `stopping` says so
    or `config.max_steps`."""
    from sonosynth.progress import progress_bar

    bar = progress_bar(total=config.max_steps, desc=desc, disable=not progress, leave=False)
    model.train()
    for step in range(1, config.max_steps + 1):
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stopping.steps = step
        if stopping.step_done(step, loss.item(), config, validate, bar):
            break
    bar.close()
    return stopping


def batch_composition(batch_size: int, synthetic_ratio: float, n_real: int, n_synthetic: int) -> tuple[int, int]:
    """How many real and how many synthetic pairs each batch holds.

    The ratio applies when both pools exist; with only one pool every slot comes from it.
    """
    if n_synthetic == 0:
        return batch_size, 0
    if n_real == 0:
        return 0, batch_size
    synthetic = min(max(round(batch_size * synthetic_ratio), 0), batch_size)
    return batch_size - synthetic, synthetic


def save_segmenter(out: str | Path, result: TrainingResult, extra_metrics: dict[str, Any] | None = None,
                   overwrite: bool = False) -> Path:
    """Write SEGRUN (model.safetensors, config.yaml, metrics.json, and the backend's own files) atomically."""
    out = prepare_output(out, overwrite)
    with output_folder(out, overwrite) as tmp:
        if result.backend is not None:
            result.backend.save_run(tmp, result)
        else:
            save_weights(result.model, tmp)
        result.config.save(tmp / CONFIG_FILE)
        metrics = {**result.metrics(), **(extra_metrics or {})}
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return out


def save_weights(network: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import save_model

    save_model(network, str(folder / MODEL_FILE), force_contiguous=True)  # nnU-Net's network shares tensors


def read_run_config(path: Path) -> SegmentationConfig:
    """SEGRUN's config, after checking the folder holds a segmenter run at all."""
    for required in (path / CONFIG_FILE, path / MODEL_FILE):
        if not required.is_file():
            raise SonosynthError(f"{required}: missing; not a segmenter run folder")
    return SegmentationConfig.from_yaml(path / CONFIG_FILE)


def load_weights(network: torch.nn.Module, path: Path, device: torch.device) -> torch.nn.Module:
    """SEGRUN's weights into `network`, on `device`, in eval mode; one line for a corrupt or mismatched file."""
    from safetensors.torch import load_model

    try:
        load_model(network, str(path / MODEL_FILE))
    except Exception as exc:  # safetensors/torch raise several types for corrupt or mismatched files
        raise SonosynthError(f"{path / MODEL_FILE}: cannot load weights ({exc})") from None
    return network.to(device).eval()


def load_unet(path: str | Path, device: str | torch.device = "cpu") -> Segmenter:
    """A U-Net SEGRUN (its own run, or SAM's box U-Net) onto `device`."""
    path, device = Path(path), resolve_device(device)
    config = read_run_config(path)
    return Segmenter(load_weights(build_unet(config.net_size, config.num_labels), path, device), config)
