"""`sonosynth classify train`: a classifier trained on a dataset's train split (+ synthetic pairs), early-stopped on
its val split and scored once on its test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sonosynth.classification.classifier import (
    ClassifierConfig,
    evaluate,
    load_labeled,
    save_classifier,
    train_classifier,
    with_dataset_classes,
)
from sonosynth.data.format import Dataset
from sonosynth.data.validate import require_separate, require_valid
from sonosynth.devices import resolve_device
from sonosynth.errors import DataError
from sonosynth.files import prepare_output
from sonosynth.segmentation.train import real_splits


def classify_from_folders(dataset_path: str | Path, out: str | Path, config: ClassifierConfig,
                          synthetic_path: str | Path | None = None, overwrite: bool = False, progress: bool = True,
                          device: str = "cpu", auto_split: bool = False) -> Path:
    """Train on DATASET's train split (+ SYNTHETIC, whose pairs carry the same attribute), keep the weights of
    the best validation balanced accuracy, write RUN/ with the test split's balanced accuracy, macro AUC,
    per-class recall and per-image probabilities in metrics.json."""
    out = prepare_output(out, overwrite, inputs=[dataset_path, synthetic_path])
    resolve_device(device)
    dataset = Dataset.open(dataset_path)
    config = with_dataset_classes(config, dataset)
    train, val, test = real_splits(dataset, seed=config.seed, auto_split=auto_split)
    require_valid(train, "training pairs")
    require_valid(val, "validation pairs")
    synthetic = None
    if synthetic_path is not None:
        synthetic = Dataset.open(synthetic_path)
        require_valid(synthetic, "synthetic pairs")
        require_separate(Dataset(dataset.root, dataset.info, [*val.records, *test.records]), synthetic)
        if config.attribute not in synthetic.info.categorical_attributes:
            raise DataError(f"{synthetic.root}/dataset.json: no attribute {config.attribute!r}: the synthetic pairs "
                            "need the class their generator was conditioned on")
    images = {name: load_labeled(part, config.attribute, config.classes, config.size)
              for name, part in (("train", train), ("val", val), ("test", test))}
    extra = None if synthetic is None else load_labeled(synthetic, config.attribute, config.classes, config.size)
    result = train_classifier(config, images["train"], images["val"], extra, progress=progress, device=device)
    metrics: dict[str, Any] = {"dataset": str(Path(dataset_path).resolve()),
                               "synthetic": None if synthetic_path is None else str(Path(synthetic_path).resolve()),
                               "n_train": len(images["train"]), "n_val": len(images["val"]),
                               "n_synthetic": 0 if extra is None else len(extra), "classes": config.classes}
    if len(images["test"]):
        scores = evaluate(result.model, images["test"], len(config.classes))
        metrics["test"] = {"balanced_accuracy": scores["balanced_accuracy"], "macro_auc": scores["macro_auc"],
                           "recall": dict(zip(config.classes, scores["recall"], strict=True)),
                           "per_image": [{"id": i, "label": int(y), "probabilities": [round(float(p), 5) for p in ps]}
                                         for i, y, ps in zip(images["test"].ids, images["test"].labels,
                                                             scores["probabilities"], strict=True)]}
    return save_classifier(out, result, metrics)
