"""nnU-Net v2 as a segmenter: planned, preprocessed, trained (`2d`) and applied with nnU-Net's own API.

The pairs nnU-Net trains on are the ones the U-Net trains on: letterboxed to `size` x `size`, so real
and synthetic images share one size and pixel scale, and predictions go back to each test image's
own grid exactly as the U-Net's do. They are written as a sonosynth dataset folder and exported with
`data.export.export_nnunet` (nnU-Net's integrity check then reads our exporter's output on every run).

- **Folders**: nnU-Net's `nnUNet_raw`, `nnUNet_preprocessed` and `nnUNet_results` are the user's when
  those environment variables are set (a free dataset id is taken there), else folders under `workdir`.
- **Mixing**: nnU-Net draws training cases uniformly from its split's `train` list; real and synthetic
  cases are listed the number of times that makes `synthetic_ratio` of the draws synthetic, the
  U-Net's batch ratio in expectation.
- **Batch size**: nnU-Net caps its batch at 5 % of the dataset's pixels, so 200 synthetic cases would
  raise it (batch 10 instead of 2 for 6 real HC18 images) and that arm would see five times the patches
  per iteration. The batch is therefore planned on the real (and validation) cases alone
  (`batch_planned_on_real`): both arms of a cell train on the same batch and differ only in what they draw.
- **Schedule**: `max_steps` training iterations in epochs of `val_every` iterations (nnU-Net's default is
  1000 x 250); each epoch ends with nnU-Net's pseudo Dice on the validation cases, and training stops
  after `patience` epochs without a new best EMA pseudo Dice (the criterion of nnU-Net's
  `checkpoint_best`), whose weights are kept. Optimiser, patch size and augmentation are nnU-Net's
  own, and the batch as above: `learning_rate`, `batch_size`, `augment` and `classical` apply to the U-Net only.
- **No pickles**: the trainer keeps its best weights in memory instead of `torch.save`, the run stores
  them as safetensors with nnU-Net's plans, and prediction goes through `nnUNetPredictor` initialised
  from those (`manual_initialization`), never from a `.pth` file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from sonosynth.errors import SonosynthError
from sonosynth.files import read_json_object
from sonosynth.segmentation.common import PairTensors, SegmentationConfig, Segmenter, TrainingResult, save_weights

FOLDER_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
AUGMENTATION_WORKERS = "nnUNet_n_proc_DA"  # nnU-Net's own name for it
CONFIGURATION = "2d"
PLANS_FILE = "nnunet_plans.json"
DATASET_FILE = "nnunet_dataset.json"
# nnU-Net's reader for PNG files gives every 2-D image this spacing (z, y, x); prediction must match it.
NATURAL_IMAGE_SPACING = (999.0, 1.0, 1.0)
# nnU-Net's planner (`ExperimentPlanner.__init__`): one batch covers at most this share of the dataset, and
# the batch is at least this; `batch_planned_on_real` applies the same rule to the real cases.
PLANNER_MAX_DATASET_COVERED = 0.05
PLANNER_MIN_BATCH_SIZE = 2


def require_nnunet() -> None:
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise SonosynthError("--net nnunet needs the nnunetv2 package: pip install 'sonosynth[nnunet]'") from None


@dataclass
class NnUNetModel:
    """What nnU-Net's predictor needs besides the weights: its plans and dataset.json, and the mirroring axes
    (nnU-Net's `Backend`)."""

    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    mirror_axes: tuple[int, ...] | None
    name: ClassVar[str] = "nnunet"
    _predictor: Any = field(default=None, init=False, repr=False, compare=False)

    def predict(self, segmenter: Segmenter, batch: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        """nnU-Net's own sliding-window predictor, with its test-time mirroring (made once)."""
        if self._predictor is None:
            self._predictor = self.predictor(segmenter.network, segmenter.device)
        return nnunet_probabilities(self._predictor, batch)

    def save_run(self, folder: Path, result: TrainingResult) -> None:
        save_weights(result.model, folder)
        self.save(folder)

    def build_network(self) -> torch.nn.Module:
        """The planned 2-D network, deep supervision off (as nnU-Net predicts)."""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans = PlansManager(self.plans)
        configuration = plans.get_configuration(CONFIGURATION)
        return nnUNetTrainer.build_network_architecture(
            plans, configuration,
            determine_num_input_channels(plans, configuration, self.dataset_json),
            plans.get_label_manager(self.dataset_json).num_segmentation_heads,
            enable_deep_supervision=False,
        )

    def predictor(self, network: torch.nn.Module, device: torch.device) -> Any:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans = PlansManager(self.plans)
        predictor = nnUNetPredictor(device=device, perform_everything_on_device=device.type == "cuda", verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(
            network, plans, plans.get_configuration(CONFIGURATION),
            [{k: v.to(device) for k, v in network.state_dict().items()}], self.dataset_json,
            "nnUNetTrainer", self.mirror_axes,
        )
        return predictor

    def save(self, folder: Path) -> None:
        (folder / PLANS_FILE).write_text(json.dumps(self.plans, indent=1) + "\n")
        dataset = {**self.dataset_json, "sonosynth_mirror_axes": self.mirror_axes}
        (folder / DATASET_FILE).write_text(json.dumps(dataset, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> NnUNetModel:
        for name in (PLANS_FILE, DATASET_FILE):
            if not (folder / name).is_file():
                raise SonosynthError(f"{folder / name}: missing; not an nnU-Net segmenter run folder")
        dataset = read_json_object(folder / DATASET_FILE, "nnU-Net dataset record")
        axes = dataset.pop("sonosynth_mirror_axes", None)
        plans = read_json_object(folder / PLANS_FILE, "nnU-Net plans")
        return cls(plans, dataset, None if axes is None else tuple(axes))


def nnunet_probabilities(predictor: Any, batch: torch.Tensor) -> torch.Tensor:
    """Class probabilities (N, C, S, S) from nnU-Net's predictor for letterboxed images in [-1, 1].

    Each image enters as the PNG nnU-Net was trained on would be read (0..255, shape (1, 1, S, S)).
    """
    out = []
    for image in batch.cpu():
        pixels = torch.round((image.clamp(-1, 1) + 1) * 127.5).numpy().astype(np.float32)[:, None]
        _, probabilities = predictor.predict_single_npy_array(
            pixels, {"spacing": NATURAL_IMAGE_SPACING}, None, None, True
        )
        out.append(torch.as_tensor(np.asarray(probabilities, dtype=np.float32))[:, 0])
    return torch.stack(out)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set while inside (nnU-Net reads its settings from them), restored after."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        os.environ.update(values)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def nnunet_folders(workdir: Path) -> Iterator[dict[str, Path]]:
    """nnU-Net's three folders: the user's (environment) where set, else under `workdir`; set while inside.

    Folders under `workdir` start empty (a rerun of an interrupted cell starts over); the user's are only added to.
    """
    folders = {name: Path(os.environ[name]) if os.environ.get(name) else workdir / name for name in FOLDER_VARIABLES}
    for name, folder in folders.items():
        if not os.environ.get(name):
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    with environment({name: str(folder) for name, folder in folders.items()}):
        yield folders


def free_dataset_id(folders: dict[str, Path]) -> int:
    """The smallest nnU-Net dataset id not used in any of the three folders."""
    taken = set()
    for folder in folders.values():
        for entry in folder.glob("Dataset[0-9][0-9][0-9]_*"):
            taken.add(int(entry.name[7:10]))
    free = next((i for i in range(1, 1000) if i not in taken), None)
    if free is None:
        raise SonosynthError(f"{folders['nnUNet_raw']}: every nnU-Net dataset id (1..999) is taken")
    return free


def case_multiplicities(n_real: int, n_synthetic: int, synthetic_ratio: float) -> tuple[int, int]:
    """How many times each real and each synthetic case is listed so draws are `synthetic_ratio` synthetic."""
    if n_real == 0 or n_synthetic == 0 or synthetic_ratio in (0.0, 1.0):
        return int(n_real > 0 and (synthetic_ratio < 1.0 or n_synthetic == 0)), int(n_synthetic > 0 and (
            synthetic_ratio > 0.0 or n_real == 0))
    # real : synthetic listing ratio a / b = ((1 - r) / n_real) / (r / n_synthetic), as a small fraction
    times = Fraction((1 - synthetic_ratio) * n_synthetic / (synthetic_ratio * n_real)).limit_denominator(20)
    return max(1, times.numerator), max(1, times.denominator)


def batch_planned_on_real(plans: dict[str, Any], n_real_cases: int) -> int:
    """The `2d` batch nnU-Net's planner gives a dataset of `n_real_cases` cases of the same shapes.

    The planner's rule (`ExperimentPlanner.get_plans_for_configuration`): the batch its memory estimate
    allows, capped so that one batch covers at most 5 % of the dataset's pixels, and at least 2. The
    cap only falls with fewer cases, so min(planned batch, cap for the real cases) is that rule's value.
    """
    configuration = plans["configurations"][CONFIGURATION]
    pixels = float(np.prod(configuration["median_image_size_in_voxels"], dtype=np.float64)) * n_real_cases
    cap = round(pixels * PLANNER_MAX_DATASET_COVERED / float(np.prod(configuration["patch_size"], dtype=np.float64)))
    return max(min(int(configuration["batch_size"]), cap), PLANNER_MIN_BATCH_SIZE)


def write_cases(out: Path, labels: dict[str, str], parts: dict[str, PairTensors]) -> None:
    """The letterboxed pairs as a sonosynth dataset folder, ids `<part>-<index>`."""
    from sonosynth.data.format import DatasetInfo, DatasetWriter

    info = DatasetInfo(name="sonosynth_cell", labels=dict(labels))
    with DatasetWriter(out, info) as writer:
        for part, pairs in parts.items():
            for i in range(len(pairs)):
                pixels = torch.round((pairs.images[i, 0].clamp(-1, 1) + 1) * 127.5).to(torch.uint8).numpy()
                writer.add(f"{part}-{i:05d}", pixels, pairs.labels[i].to(torch.uint8).numpy(), subject=part)


def train_nnunet(
    config: SegmentationConfig,
    train: PairTensors,
    val: PairTensors | None,
    synthetic: PairTensors | None,
    workdir: Path | None = None,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, NnUNetModel, dict[str, Any]]:
    """Plan, preprocess and train nnU-Net `2d` on the pairs; (best network, its plans, training summary)."""
    require_nnunet()
    from sonosynth.data.export import export_nnunet
    from sonosynth.devices import resolve_device

    if val is None or len(val) == 0:
        raise SonosynthError("--net nnunet needs validation pairs (nnU-Net picks its best epoch on them)")
    device = resolve_device(device)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sonosynth-nnunet-")))
        workdir.mkdir(parents=True, exist_ok=True)
        folders = stack.enter_context(nnunet_folders(workdir))
        given = synthetic is not None and len(synthetic)
        parts = {"real": train, "val": val, **({"synthetic": synthetic} if given else {})}
        cases = workdir / "cases"
        shutil.rmtree(cases, ignore_errors=True)
        write_cases(cases, config.labels, parts)
        dataset_id = free_dataset_id(folders)
        raw = export_nnunet(cases, folders["nnUNet_raw"], dataset_id, name="sonosynth", overwrite=True)
        _plan_and_preprocess(dataset_id, verbose=progress)
        preprocessed = folders["nnUNet_preprocessed"] / raw.name
        plans_file = preprocessed / "nnUNetPlans.json"
        plans = json.loads(plans_file.read_text())
        plans["configurations"][CONFIGURATION]["batch_size"] = batch_planned_on_real(plans, len(train) + len(val))
        plans_file.write_text(json.dumps(plans, indent=1) + "\n")
        real_times, synthetic_times = case_multiplicities(len(train), len(parts.get("synthetic", ())),
                                                      config.synthetic_ratio)
        names = sorted(p.name[: -len("_0000.png")] for p in (raw / "imagesTr").glob("*_0000.png"))
        train_keys = [n for n in names if n.startswith("real-")] * real_times
        train_keys += [n for n in names if n.startswith("synthetic-")] * synthetic_times
        split = [{"train": sorted(train_keys), "val": [n for n in names if n.startswith("val-")]}]
        (preprocessed / "splits_final.json").write_text(json.dumps(split, indent=1) + "\n")
        return _train(config, preprocessed, len(val), device, progress)


def _plan_and_preprocess(dataset_id: int, verbose: bool) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    with _quiet(not verbose):
        extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, verbose=False,
                             show_progress_bar=False)
        plan_experiments([dataset_id])
        preprocess([dataset_id], configurations=(CONFIGURATION,), num_processes=(1,), show_progress_bar=False)


def _train(config: SegmentationConfig, preprocessed: Path, n_val: int, device: torch.device,
           progress: bool) -> tuple[torch.nn.Module, NnUNetModel, dict[str, Any]]:
    trainer_class = _early_stopping_trainer()
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)
    # augment in this process (no worker pool) unless the user says otherwise
    workers = {AUGMENTATION_WORKERS: os.environ.get(AUGMENTATION_WORKERS, "0")}
    with _quiet(not progress), environment(workers):
        trainer = trainer_class(plans={**plans, "continue_training": False}, configuration=CONFIGURATION, fold=0,
                                dataset_json=dataset_json, device=device)
        trainer.num_iterations_per_epoch = config.val_every
        trainer.num_epochs = math.ceil(config.max_steps / config.val_every)
        trainer.patience = config.patience
        trainer.min_epochs = math.ceil(config.min_steps / config.val_every)
        trainer.initialize()
        trainer.num_val_iterations_per_epoch = min(50, max(1, math.ceil(n_val / trainer.batch_size)))
        trainer.run_training()
    if trainer.best_state is None:
        raise SonosynthError("nnU-Net finished without a validation epoch; raise --max-steps")
    model = NnUNetModel(plans, dataset_json, trainer.inference_allowed_mirroring_axes)
    network = model.build_network()
    network.load_state_dict(trainer.best_state)
    network.to(device).eval()
    logger = trainer.logger
    history = [
        {"step": (epoch + 1) * config.val_every, "loss": round(float(loss), 5), "val_dice": round(float(ema), 5)}
        for epoch, (loss, ema) in enumerate(zip(logger.get_value("train_losses", None) or [],
                                                logger.get_value("ema_fg_dice", None) or [], strict=False))
    ]
    summary = {
        "steps": len(history) * config.val_every,
        "best_step": (trainer.best_epoch + 1) * config.val_every,
        "best_val_dice": float(trainer._best_ema),
        "history": history,
        "nnunet": {"batch_size": int(trainer.batch_size),
                   "patch_size": [int(s) for s in trainer.configuration_manager.patch_size],
                   "iterations_per_epoch": config.val_every,
                   "val_iterations_per_epoch": int(trainer.num_val_iterations_per_epoch)},
    }
    return network, model, summary


@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """nnU-Net prints a great deal; keep it off the terminal unless asked (`progress`)."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _early_stopping_trainer() -> type:
    """nnU-Net's trainer with early stopping, and its best weights kept in memory instead of pickled."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class EarlyStoppingTrainer(nnUNetTrainer):
        patience: int = 5
        min_epochs: int = 0
        best_state: dict[str, torch.Tensor] | None = None
        best_epoch: int = -1

        def save_checkpoint(self, filename: str) -> None:  # no torch.save: nothing to unpickle later
            if "checkpoint_best" in str(filename):
                network = self.network._orig_mod if hasattr(self.network, "_orig_mod") else self.network
                self.best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
                self.best_epoch = self.current_epoch

        def plot_network_architecture(self) -> None:  # needs hiddenlayer/graphviz binaries; not ours to draw
            return

        def run_training(self) -> None:
            """nnU-Net's loop, ended early after `patience` epochs without a new best EMA pseudo Dice."""
            self.on_train_start()
            for _ in range(self.current_epoch, self.num_epochs):
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
                self.on_train_epoch_end(outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                    self.on_validation_epoch_end(outputs)
                self.on_epoch_end()
                if self.current_epoch - 1 - self.best_epoch >= self.patience and self.current_epoch >= self.min_epochs:
                    break
            self.on_train_end()

    return EarlyStoppingTrainer
