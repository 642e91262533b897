"""`segment train`: the segmenter `net` names (U-Net, nnU-Net, Segment Anything) trained on a dataset's real pairs,
optionally with synthetic pairs, and saved as a run folder; and the real splits every segmenter trains on.

Datasets here are small (tens to hundreds of images), so all pairs are letterboxed once and kept in memory as
tensors (`common.load_pairs`). This module only dispatches: each family trains in its own module.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sonosynth.data.format import Dataset, DatasetInfo
from sonosynth.data.validate import require_separate, require_valid
from sonosynth.devices import resolve_device
from sonosynth.errors import DataError, SonosynthError
from sonosynth.files import prepare_output
from sonosynth.segmentation.common import (
    PairTensors,
    SegmentationConfig,
    TrainingResult,
    load_pairs,
    save_segmenter,
)
from sonosynth.segmentation.unet import train_unet


def train_segmenter(
    config: SegmentationConfig,
    train: PairTensors,
    val: PairTensors | None = None,
    synthetic: PairTensors | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    workdir: Path | None = None,
) -> TrainingResult:
    """Train the segmenter `config.net` names; `synthetic` pairs fill `synthetic_ratio` of each batch, or with
    `synthetic_schedule: pretrain` train the U-Net alone first (its pretraining history under `details`).

    The U-Net trains in `unet.py`, Segment Anything in `sam.py`, nnU-Net (`nnunet.py`) in its own loop, its
    folders under `workdir` (a temporary folder when None) unless the environment names them.
    """
    config.validate()
    synthetic = synthetic if synthetic is not None and len(synthetic) else None
    if len(train) == 0 and synthetic is None:
        raise SonosynthError("no training pairs: the real training set is empty and no --synthetic data was given")
    if config.net == "nnunet":
        from sonosynth.segmentation.nnunet import train_nnunet

        started = time.perf_counter()
        network, plans, summary = train_nnunet(config, train, val, synthetic, workdir, progress, device)
        return TrainingResult(model=network, config=config, steps=summary["steps"], best_step=summary["best_step"],
                              best_val_dice=summary["best_val_dice"], history=summary["history"],
                              seconds=time.perf_counter() - started, backend=plans,
                              details={"nnunet": summary["nnunet"]})
    if config.net == "sam":
        from sonosynth.segmentation.sam import train_sam

        return train_sam(config, train, val, synthetic, progress, device)
    return train_unet(config, train, val, synthetic, progress, device)


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
    synthetic_path: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    device: str = "cpu",
    auto_split: bool = False,
) -> Path:
    """`sonosynth segment train`: train on DATASET's train split (+ SYNTHETIC), early-stop on its val split.

    SYNTHETIC (pairs a generator made, usually) must name its labels as DATASET does and may hold none of DATASET's
    validation or test pairs (`require_separate`); a DATASET without splits needs `auto_split`."""
    out = prepare_output(out, overwrite, inputs=[dataset_path, synthetic_path])
    resolve_device(device)
    dataset = Dataset.open(dataset_path)
    train, val, test = real_splits(dataset, seed=config.seed, auto_split=auto_split)
    if len(train) == 0 and synthetic_path is None:
        raise DataError(f"{dataset.root}: no pairs in split 'train' to train on (give --synthetic pairs, or split it)")
    synthetic_ds = Dataset.open(synthetic_path) if synthetic_path is not None else None
    if synthetic_ds is not None:
        check_compatible_labels(dataset, synthetic_ds)
    config.labels = dict(dataset.info.labels)
    config.validate()
    require_valid(train, "training pairs")
    require_valid(val, "validation pairs")
    if synthetic_ds is not None:
        require_valid(synthetic_ds, "synthetic pairs")
        require_separate(Dataset(dataset.root, dataset.info, [*val.records, *test.records]), synthetic_ds)
    train_pairs = load_pairs(train, config.size, progress)
    val_pairs = load_pairs(val, config.size, progress)
    synthetic_pairs = load_pairs(synthetic_ds, config.size, progress) if synthetic_ds is not None else None
    result = train_segmenter(config, train_pairs, val_pairs, synthetic_pairs, progress=progress, device=device)
    info = {
        "dataset": str(Path(dataset_path).resolve()),
        "synthetic": None if synthetic_path is None else str(Path(synthetic_path).resolve()),
        "n_train": len(train_pairs),
        "n_val": len(val_pairs),
        "n_synthetic": 0 if synthetic_pairs is None else len(synthetic_pairs),
        "torch": torch.__version__,
    }
    return save_segmenter(out, result, info, overwrite=overwrite)
