"""The downstream experiment: does adding synthetic pairs help a segmenter when real data is scarce?

For each k (real training subjects, nested: a seeded permutation of the training subjects, first k)
and each arm (real, real+synthetic, synthetic), a segmenter is trained and scored on the real test
split in the original pixel grid. Each (k, arm, seed) is a cell saved as REPORT/cells/<cell>.json
the moment it finishes, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sonosynth.data.format import Dataset
from sonosynth.devices import resolve_device
from sonosynth.errors import SonosynthError
from sonosynth.segmentation.train import SegmentationConfig

ARMS = ("real", "real+synthetic", "synthetic")
CELLS_DIR = "cells"
SETTINGS_FILE = "settings.json"


@dataclass
class DownstreamConfig:
    ks: list[str] = field(default_factory=lambda: ["5", "10", "20", "all"])
    seeds: int = 3
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    head_circumference: bool | None = None  # None: on when label 1 is named 'head'

    def validate(self, has_synthetic: bool) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise SonosynthError(f"unknown arms {unknown} (choose from {', '.join(ARMS)})")
        if not has_synthetic and any(a != "real" for a in self.arms):
            raise SonosynthError("arms with synthetic data need --synthetic SYNTH (or use --arms real)")
        for k in self.ks:
            if k != "all" and (not k.isdigit() or int(k) < 1):
                raise SonosynthError(f"--k {k}: each k must be a positive integer or 'all'")
        if self.seeds < 1:
            raise SonosynthError("--seeds must be at least 1")


@dataclass(frozen=True)
class Cell:
    k: str  # "-" for the synthetic-only arm, which uses no real training data
    arm: str
    seed: int

    @property
    def name(self) -> str:
        return f"k{self.k if self.k != '-' else 'none'}__{self.arm}__seed{self.seed}"


def parse_ks(text: str) -> list[str]:
    return [k.strip().lower() for k in text.split(",") if k.strip()]


def plan_cells(config: DownstreamConfig) -> list[Cell]:
    """All cells, seed-major so a partial run already has every arm for the first seeds."""
    cells = []
    for seed in range(config.seeds):
        for k in config.ks:
            cells.extend(Cell(k, arm, seed) for arm in config.arms if arm != "synthetic")
        if "synthetic" in config.arms:
            cells.append(Cell("-", "synthetic", seed))
    return cells


def nested_subjects(subjects: list[str], k: str, seed: int) -> list[str]:
    """The first k subjects of a seeded permutation: k=5 is inside k=10 for the same seed."""
    order = np.random.default_rng(seed).permutation(len(subjects))
    ordered = [sorted(subjects)[i] for i in order]
    if k == "all":
        return ordered
    if int(k) > len(ordered):
        raise SonosynthError(f"k={k} exceeds the {len(ordered)} training subjects of the real dataset")
    return ordered[: int(k)]


def uses_head_circumference(dataset: Dataset, flag: bool | None) -> bool:
    return flag if flag is not None else dataset.info.labels.get("1", "").lower() == "head"


def run_downstream(
    real_path: str | Path,
    out: str | Path,
    config: DownstreamConfig,
    synthetic_path: str | Path | None = None,
    command: str = "",
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Run (or resume) every missing cell, then write results.csv, results.md, the plot and report.html."""
    import torch
    from tqdm.auto import tqdm

    from sonosynth.evaluation.metrics import score_pair, summarize
    from sonosynth.evaluation.report import write_downstream_report
    from sonosynth.segmentation.predict import Segmenter, predict_masks
    from sonosynth.segmentation.train import (
        check_compatible_labels,
        load_pairs,
        real_splits,
        train_segmenter,
    )

    config.validate(synthetic_path is not None)
    resolve_device(device)
    real = Dataset.open(real_path)
    synthetic = Dataset.open(synthetic_path) if synthetic_path is not None else None
    if synthetic is not None:
        check_compatible_labels(real, synthetic)
    train, val, test = real_splits(real, seed=0)
    if len(test) == 0:
        raise SonosynthError(f"{real.root}: no test split to evaluate on (run `sonosynth data split`)")
    segmentation = replace(config.segmentation, labels=dict(real.info.labels))
    segmentation.validate()
    head_label = 1 if uses_head_circumference(real, config.head_circumference) else None

    out = Path(out)
    cells_dir = out / CELLS_DIR
    cells_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "real": str(Path(real_path).resolve()),
        "synthetic": None if synthetic_path is None else str(Path(synthetic_path).resolve()),
        "segmentation": asdict(segmentation),
        "head_circumference": head_label is not None,
    }
    _check_or_write_settings(out / SETTINGS_FILE, settings)

    cells = plan_cells(config)
    todo = [c for c in cells if not (cells_dir / f"{c.name}.json").is_file()]
    if todo:
        train_pairs = load_pairs(train, segmentation.size, progress)
        val_pairs = load_pairs(val, segmentation.size, progress)
        synth_pairs = load_pairs(synthetic, segmentation.size, progress) if synthetic is not None else None
        test_samples = list(test)
        subject_of = [r.subject or r.id for r in train.records]
        for cell in tqdm(todo, desc="downstream cells", disable=not progress):
            real_index: list[int] = []
            if cell.arm != "synthetic":
                chosen = set(nested_subjects(train.subjects, cell.k, cell.seed))
                real_index = [i for i, s in enumerate(subject_of) if s in chosen]
            cell_config = replace(segmentation, seed=cell.seed)
            result = train_segmenter(
                cell_config,
                train_pairs.select(real_index),
                val_pairs,
                synth_pairs if cell.arm != "real" else None,
                progress=False,
                device=device,
            )
            segmenter = Segmenter(result.model, cell_config)
            with torch.no_grad():
                predictions = predict_masks(segmenter, [s.image for s in test_samples])
            scores = [
                score_pair(pred, s.mask, real.info.num_labels, s.record.spacing_mm, head_label)
                for pred, s in zip(predictions, test_samples, strict=True)
            ]
            record = {
                **asdict(cell),
                "n_real_subjects": len({subject_of[i] for i in real_index}),
                "n_real_images": len(real_index),
                "n_synthetic_images": 0 if cell.arm == "real" or synth_pairs is None else len(synth_pairs),
                "n_test_images": len(test_samples),
                "hd95_unit": "mm" if all(s.record.spacing_mm for s in test_samples) else "px",
                **{k: v for k, v in result.metrics().items() if k != "history"},
                "metrics": summarize(scores),
                "per_image": [
                    {"id": s.id, "dice": sc.dice, "hd95": sc.hd95, "hc_abs_error_mm": sc.hc_abs_error_mm}
                    for s, sc in zip(test_samples, scores, strict=True)
                ],
            }
            _write_json_atomic(cells_dir / f"{cell.name}.json", record)

    finished = [json.loads((cells_dir / f"{c.name}.json").read_text()) for c in cells]
    write_downstream_report(out, finished, real, synthetic, settings, command=command)
    return out


def _check_or_write_settings(path: Path, settings: dict[str, Any]) -> None:
    """Resuming is only honest with the same data and training settings; refuse otherwise."""
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if previous.get(k) != json.loads(json.dumps(settings)).get(k))
            raise SonosynthError(
                f"{path}: this report was started with different settings ({', '.join(changed)}); "
                "use a new --out to run with the new ones"
            )
        return
    _write_json_atomic(path, settings)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def is_missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
