"""A MONAI image classifier trained from scratch on letterboxed images, early-stopped on validation balanced accuracy.

The class of a pair is one of its categorical attributes (BUSI `pathology`, CAMUS `view` or `phase`); a synthetic
pair takes its class from the generator's condition, which `generate` writes as the same attribute. No weights
can be downloaded, so every network starts from random weights: `densenet121` and `efficientnet-b0` as MONAI
builds them, `small` (a 4-block DenseNet, about 0.3 M parameters) for a CPU, `tiny` for tests.

As the U-Net segmenter (`segmentation.unet`), images stay in host memory, batches are drawn with a CPU generator
seeded by the run seed and each image is augmented with its own seed, so a run does not depend on the device;
synthetic images fill `synthetic_ratio` of each batch. The loss is class-weighted cross-entropy (weights inverse
to the classes' frequencies in the real training images), so a majority class does not win by default.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from sonosynth.augment import Augmentation, AugmentConfig
from sonosynth.data.format import Dataset
from sonosynth.errors import DataError, SonosynthError
from sonosynth.metrics import balanced_accuracy, class_recalls, macro_auc
from sonosynth.seeds import derive_seed
from sonosynth.segmentation.common import EarlyStopping, batch_composition, early_stopped_steps, image_to_model
from sonosynth.settings import Config

NETS = ("tiny", "small", "densenet121", "efficientnet-b0")
SCORE = "val_balanced_accuracy"


@dataclass
class ClassifierConfig(Config):
    """Everything that determines a classifier's training (saved as RUN/config.yaml)."""

    what: ClassVar[str] = "classifier config"

    attribute: str = "pathology"  # the categorical attribute that is the class
    classes: list[str] = field(default_factory=list)  # its values in index order (empty: the dataset's)
    net: str = "small"
    size: int = 64
    max_steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    val_every: int = 50
    patience: int = 5
    min_steps: int = 0
    synthetic_ratio: float = 0.5
    augment: bool = True
    classical: AugmentConfig | None = None  # None: the light preset; else these (strong) classical ranges
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.classical, dict):
            self.classical = AugmentConfig.from_dict(self.classical)
        self.classes = [str(c) for c in self.classes]
        if self.net not in NETS:
            raise SonosynthError(f"classifier net must be one of {list(NETS)}, got {self.net!r}")
        if len(set(self.classes)) != len(self.classes):
            raise SonosynthError(f"classifier classes must be distinct, got {self.classes}")


@dataclass
class LabeledImages:
    """Letterboxed images (N, 1, S, S) in [-1, 1], their class indices (N,) and pair ids."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def dataset_classes(dataset: Dataset, attribute: str) -> list[str]:
    """The values of a categorical attribute as the dataset declares them (a one-line error otherwise)."""
    values = dataset.info.categorical_attributes.get(attribute)
    if not values:
        raise DataError(f"{dataset.root}/dataset.json: no categorical attribute {attribute!r} to classify by "
                        f"(it has {sorted(dataset.info.categorical_attributes) or 'none'})")
    return list(values)


def load_labeled(dataset: Dataset, attribute: str, classes: list[str], size: int) -> LabeledImages:
    """Every pair of `dataset` as a letterboxed image and the index of its `attribute` in `classes`."""
    images, labels, ids = [], [], []
    for sample in dataset:
        value = sample.record.attributes.get(attribute, "")
        if value not in classes:
            raise DataError(f"{dataset.root}/manifest.csv: pair {sample.record.id} has {attribute}={value!r}, "
                            f"not one of the classes {classes}")
        images.append(image_to_model(sample.image, size))
        labels.append(classes.index(value))
        ids.append(sample.record.id)
    if not images:
        return LabeledImages(torch.zeros(0, 1, size, size), torch.zeros(0, dtype=torch.long), [])
    return LabeledImages(torch.stack(images), torch.tensor(labels, dtype=torch.long), ids)


def build_classifier(net: str, n_classes: int) -> torch.nn.Module:
    """A randomly initialised MONAI classifier for one-channel images."""
    from monai.networks.nets import DenseNet, DenseNet121, EfficientNetBN

    if net == "densenet121":
        return DenseNet121(spatial_dims=2, in_channels=1, out_channels=n_classes)
    if net == "efficientnet-b0":
        return EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=1,
                              num_classes=n_classes)
    features, growth, blocks = {"tiny": (8, 8, (2, 2)), "small": (16, 16, (2, 4, 4, 2))}[net]
    return DenseNet(spatial_dims=2, in_channels=1, out_channels=n_classes, init_features=features,
                    growth_rate=growth, block_config=blocks)


@dataclass
class ClassifierResult:
    model: torch.nn.Module
    config: ClassifierConfig
    steps: int
    best_step: int
    best_val_balanced_accuracy: float | None
    history: list[dict[str, float]]
    seconds: float


def train_classifier(config: ClassifierConfig, train: LabeledImages, val: LabeledImages | None,
                     synthetic: LabeledImages | None = None, progress: bool = True,
                     device: str | torch.device = "cpu") -> ClassifierResult:
    """Train `config.net` on `train` (+ `synthetic`); the weights of the best validation balanced accuracy."""
    from sonosynth.devices import resolve_device

    n_classes = len(config.classes)
    if n_classes < 2:
        raise SonosynthError(f"a classifier needs at least two classes, got {config.classes}")
    synthetic = synthetic if synthetic is not None and len(synthetic) else None
    if len(train) == 0 and synthetic is None:
        raise SonosynthError("no training images: the real training set is empty and no synthetic images were given")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_classifier(config.net, n_classes)
    model.to(resolve_device(device))
    weights = class_weights(train if len(train) else synthetic, n_classes)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights.to(next(model.parameters()).device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    validate = (lambda: evaluate(model, val, n_classes)["balanced_accuracy"]) if val is not None and len(val) \
        else None
    stopping = EarlyStopping(config.patience, lambda: {k: v.detach().clone() for k, v in model.state_dict().items()},
                             config.min_steps, score_name=SCORE)
    started = time.perf_counter()
    draw, device_ = batches(config, train, synthetic), next(model.parameters()).device

    def step_loss(step: int) -> torch.Tensor:
        images, labels = draw(step)
        return loss_fn(model(images.to(device_)), labels.to(device_))

    early_stopped_steps(model, optimizer, stopping, config, validate, step_loss, progress, "classifier")
    model.load_state_dict(stopping.best_state)
    model.eval()
    best = None if stopping.best < 0 else stopping.best
    return ClassifierResult(model, config, stopping.steps, stopping.best_step, best, stopping.history,
                            time.perf_counter() - started)


def class_weights(images: LabeledImages, n_classes: int) -> torch.Tensor:
    """Cross-entropy weights inverse to each class's frequency (a class without images gets weight 1)."""
    counts = torch.bincount(images.labels, minlength=n_classes).float()
    weights = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), torch.ones_like(counts))
    return weights


def batches(config: ClassifierConfig, train: LabeledImages, synthetic: LabeledImages | None):
    """step -> an augmented batch (images, labels): real and synthetic images in `synthetic_ratio`, drawn with a
    CPU generator from the run seed, each image augmented with its own seed."""
    generator = torch.Generator().manual_seed(config.seed)
    n_real, n_synthetic = batch_composition(config.batch_size, config.synthetic_ratio, len(train),
                                            0 if synthetic is None else len(synthetic))
    augmentation = None
    if config.augment:
        augmentation = Augmentation(config.classical or AugmentConfig.preset("light"), config.size)

    def draw(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [(pool.images[i], pool.labels[i]) for pool, count in ((train, n_real), (synthetic, n_synthetic))
                 if count and pool is not None and len(pool)
                 for i in [torch.randint(0, len(pool), (count,), generator=generator)]]
        images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if augmentation is not None:
            seeds = [derive_seed(config.seed, "augment", step, slot) for slot in range(len(images))]
            blank = torch.zeros(len(images), config.size, config.size, dtype=torch.long)
            images, _ = augmentation.batch(images, blank, seeds)
        return images, labels

    return draw


def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Softmax class probabilities (N, C) for letterboxed images."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(torch.softmax(model(images[start:start + batch_size].to(device)), dim=1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def evaluate(model: torch.nn.Module, images: LabeledImages, n_classes: int) -> dict[str, Any]:
    """Balanced accuracy, macro AUC and per-class recall of `model` on `images`, with its per-image outputs."""
    probabilities = predict_probabilities(model, images.images)
    labels = images.labels.numpy()
    predicted = probabilities.argmax(1) if len(probabilities) else np.zeros(0, int)
    recalls = class_recalls(labels, predicted, n_classes)
    return {"balanced_accuracy": balanced_accuracy(labels, predicted, n_classes),
            "macro_auc": macro_auc(labels, probabilities), "recall": recalls,
            "probabilities": probabilities, "predicted": predicted}


def save_classifier(out: Path, result: ClassifierResult, metrics: dict[str, Any]) -> Path:
    """RUN/model.safetensors, config.yaml and metrics.json (the history, the best step and `metrics`)."""
    import json

    from safetensors.torch import save_file

    from sonosynth.files import output_folder

    with output_folder(out, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(tmp / "model.safetensors"))
        result.config.save(tmp / "config.yaml")
        record = {"steps": result.steps, "best_step": result.best_step,
                  "best_val_balanced_accuracy": result.best_val_balanced_accuracy, "seconds": round(result.seconds, 1),
                  "history": result.history, **metrics}
        (tmp / "metrics.json").write_text(json.dumps(record, indent=2, default=_plain) + "\n")
    return out


def load_classifier(run: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, ClassifierConfig]:
    """A saved classifier (no unpickling: safetensors weights into the network its config names)."""
    from safetensors.torch import load_file

    run = Path(run)
    config = ClassifierConfig.from_yaml(run / "config.yaml")
    model = build_classifier(config.net, len(config.classes))
    try:
        model.load_state_dict(load_file(str(run / "model.safetensors"), device="cpu"))
    except (OSError, RuntimeError) as exc:
        raise SonosynthError(f"{run}/model.safetensors: not this classifier's weights ({str(exc)[:120]})") from None
    return model.to(device).eval(), config


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return asdict(value) if hasattr(value, "__dataclass_fields__") else str(value)


def with_dataset_classes(config: ClassifierConfig, dataset: Dataset) -> ClassifierConfig:
    """`config` with its classes filled in from the dataset when it names none."""
    return config if config.classes else replace(config, classes=dataset_classes(dataset, config.attribute))
