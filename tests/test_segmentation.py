"""Segmenter training, saving, loading and prediction on tiny data (tiny nets, 32 px, few steps)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from factories import ellipse_pair, write_toy_dataset
from typer.testing import CliRunner

from sonosynth.augment import AugmentConfig
from sonosynth.cli import app
from sonosynth.data.format import Dataset, DatasetInfo, DatasetWriter
from sonosynth.data.imageio import read_label_map
from sonosynth.errors import DataError, SonosynthError
from sonosynth.segmentation.common import PairTensors, SegmentationConfig, batch_composition, load_pairs
from sonosynth.segmentation.predict import image_to_model, load_segmenter, predict_masks
from sonosynth.segmentation.train import real_splits, train_from_folders, train_segmenter

TINY = {"size": 32, "net": "tiny", "batch_size": 4, "val_every": 20}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def write_two_label_dataset(out: Path, n: int = 8, seed: int = 0) -> Path:
    """Ellipse (label 1) with a smaller bright core (label 2): a multi-label task."""
    rng = np.random.default_rng(seed)
    info = DatasetInfo(name="two", labels={"0": "background", "1": "ring", "2": "core"})
    with DatasetWriter(out, info) as writer:
        for i in range(n):
            image, mask = ellipse_pair(rng, 40, 56)
            yy, xx = np.nonzero(mask)
            cy, cx = yy.mean(), xx.mean()
            core = (np.hypot(*np.mgrid[0:40, 0:56] - np.array([cy, cx])[:, None, None]) < 4) & (mask > 0)
            image = np.where(core, 250, image).astype(np.uint8)
            mask = mask + core.astype(np.uint8)
            writer.add(f"c{i}", image, mask, subject=f"s{i}", split="val" if i >= n - 2 else "train")
    return out


def test_train_save_load_predict_learns_the_toy_task(tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy", n=12)
    run = train_from_folders(data, tmp_path / "run", SegmentationConfig(max_steps=80, **TINY), progress=False,
                             auto_split=True)
    assert {p.name for p in run.iterdir()} == {"model.safetensors", "config.yaml", "metrics.json"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_train"] == 8 and metrics["n_val"] == 2  # 2 of 6 subjects held out for val and test
    assert metrics["best_val_dice"] is not None and metrics["history"]

    segmenter = load_segmenter(run)
    assert segmenter.config.labels == {"0": "background", "1": "head"}
    dataset = Dataset.open(data)
    masks = predict_masks(segmenter, [s.image for s in dataset])
    for sample, mask in zip(dataset, masks, strict=True):
        assert mask.shape == sample.image.shape and mask.dtype == np.uint8
    scores = [dice(m == 1, s.mask == 1) for s, m in zip(dataset, masks, strict=True)]
    assert np.mean(scores) > 0.6, scores


def test_multi_label_masks(tmp_path: Path) -> None:
    data = write_two_label_dataset(tmp_path / "two")
    run = train_from_folders(data, tmp_path / "run", SegmentationConfig(max_steps=10, **TINY), progress=False,
                             auto_split=True)
    segmenter = load_segmenter(run)
    assert segmenter.num_labels == 3
    logits = segmenter.network(torch.zeros(1, 1, 32, 32))
    assert logits.shape == (1, 3, 32, 32)
    (mask,) = predict_masks(segmenter, [Dataset.open(data)[0].image])
    assert mask.shape == (40, 56) and set(np.unique(mask)) <= {0, 1, 2}


def trained_weights(seed: int, **settings: Any) -> torch.Tensor:
    """All weights after 3 steps on four 32 px toy pairs."""
    rng = np.random.default_rng(0)
    pairs = [ellipse_pair(rng, 32, 32) for _ in range(4)]
    tensors = PairTensors(
        torch.stack([image_to_model(i, 32) for i, _ in pairs]),
        torch.stack([torch.as_tensor(m.astype(np.int64)) for _, m in pairs]),
    )
    config = SegmentationConfig(max_steps=3, seed=seed, labels={"0": "bg", "1": "head"}, **TINY, **settings)
    model = train_segmenter(config, tensors, progress=False).model
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("settings", [{}, {"classical": AugmentConfig.preset("classical")}], ids=["light", "classical"])
def test_same_seed_same_weights_and_different_seed_differs(settings: dict[str, Any]) -> None:
    assert torch.equal(trained_weights(1, **settings), trained_weights(1, **settings))
    assert not torch.equal(trained_weights(1, **settings), trained_weights(2, **settings))


def test_classical_augmentation_changes_training() -> None:
    assert not torch.equal(trained_weights(1), trained_weights(1, classical=AugmentConfig.preset("classical")))


def toy_tensors(seed: int, n: int = 4) -> PairTensors:
    rng = np.random.default_rng(seed)
    pairs = [ellipse_pair(rng, 32, 32) for _ in range(n)]
    return PairTensors(torch.stack([image_to_model(i, 32) for i, _ in pairs]),
                       torch.stack([torch.as_tensor(m.astype(np.int64)) for _, m in pairs]))


def test_pretrain_on_synthetic_then_fine_tune_on_real() -> None:
    """`synthetic_schedule: pretrain`: an early-stopped run on the extra pairs alone, then one on the real ones."""
    real, extra, val = toy_tensors(0), toy_tensors(1, n=6), toy_tensors(2, n=2)
    base = SegmentationConfig(max_steps=8, patience=1, labels={"0": "bg", "1": "head"}, **{**TINY, "val_every": 2})

    def run(**settings: Any):
        return train_segmenter(replace(base, **settings), real, val, extra, progress=False)

    pretrained, mixed = run(synthetic_schedule="pretrain"), run()
    phase = pretrained.details["pretrain"]
    assert 2 <= phase["steps"] <= 8 and phase["history"] and phase["best_val_dice"] is not None
    assert pretrained.history and pretrained.history[0]["step"] == 2  # the fine-tune phase counts from 1 again
    assert "pretrain" not in mixed.details

    def weights(result) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in result.model.parameters()])

    assert torch.equal(weights(pretrained), weights(run(synthetic_schedule="pretrain")))  # seeded
    assert not torch.equal(weights(pretrained), weights(mixed))
    real_only = train_segmenter(base, real, val, None, progress=False)
    assert not torch.equal(weights(pretrained), weights(real_only))  # it started from the pretrained weights
    with pytest.raises(SonosynthError, match="unknown synthetic schedule"):
        replace(base, synthetic_schedule="after")
    with pytest.raises(SonosynthError, match="for --net unet only"):
        SegmentationConfig(net="nnunet", synthetic_schedule="pretrain")


def test_batch_composition_follows_the_ratio() -> None:
    assert batch_composition(8, 0.5, n_real=10, n_synthetic=50) == (4, 4)
    assert batch_composition(8, 0.25, n_real=10, n_synthetic=50) == (6, 2)
    assert batch_composition(8, 0.5, n_real=10, n_synthetic=0) == (8, 0)
    assert batch_composition(8, 0.5, n_real=0, n_synthetic=50) == (0, 8)  # synthetic-only training
    assert batch_composition(8, 1.0, n_real=10, n_synthetic=50) == (0, 8)


def test_mixed_real_and_synthetic_from_the_cli(tmp_path: Path) -> None:
    real = write_toy_dataset(tmp_path / "real", n=6, seed=1)
    synth = write_toy_dataset(tmp_path / "synth", n=6, seed=2, prefix="synth")
    runner = CliRunner()
    args = ["segment", "train", "--auto-split", str(real), "--synthetic", str(synth), "--synthetic-ratio", "0.5",
            "--size", "32", "--net", "tiny", "--steps", "6", "--val-every", "3", "--batch-size", "4",
            "--out", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_synthetic"] == 6 and metrics["synthetic"].endswith("synth")

    result = runner.invoke(app, ["segment", "predict", str(tmp_path / "run"), str(real), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert written == [f"toy_{i:03d}.png" for i in range(6)]
    assert read_label_map(tmp_path / "p" / "toy_000.png").shape == (48, 64)
    assert not list(tmp_path.glob("p.tmp-*"))


def test_subject_wise_split_when_the_manifest_has_none(toy_dataset: Path) -> None:
    train, val, test = real_splits(Dataset.open(toy_dataset), auto_split=True)
    parts = [set(r.subject for r in d.records) for d in (train, val, test)]
    assert parts[0] and parts[1] and parts[2]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(train) + len(val) + len(test) == len(Dataset.open(toy_dataset))


def test_errors_are_one_line_and_name_the_file(tmp_path: Path, toy_dataset: Path) -> None:
    with pytest.raises(SonosynthError, match="config.yaml: missing"):
        load_segmenter(tmp_path / "nothing")
    (tmp_path / "exists").mkdir()
    one_step = SegmentationConfig(max_steps=1, **TINY)
    with pytest.raises(DataError, match="already exists"):
        train_from_folders(toy_dataset, tmp_path / "exists", one_step, progress=False, auto_split=True)
    with pytest.raises(SonosynthError, match="does not suit"):
        train_from_folders(toy_dataset, tmp_path / "r", SegmentationConfig(size=30, net="tiny"), progress=False,
                           auto_split=True)
    two = write_two_label_dataset(tmp_path / "two")
    with pytest.raises(DataError, match="do not match"):
        train_from_folders(toy_dataset, tmp_path / "r", one_step, synthetic_path=two, progress=False, auto_split=True)
    assert not (tmp_path / "r").exists()


def test_load_pairs_matches_model_input_convention(toy_dataset: Path) -> None:
    pairs = load_pairs(Dataset.open(toy_dataset), 32)
    assert pairs.images.shape == (6, 1, 32, 32) and pairs.labels.shape == (6, 32, 32)
    assert pairs.images.min() >= -1.0 and pairs.images.max() <= 1.0
    assert pairs.images[:, :, 0, :].max() == -1.0  # letterbox padding (48x64 -> top rows) is black


def test_the_deep_preset_reaches_a_256_px_head() -> None:
    """`deep`: five halvings (8 px bottleneck at 256 px), so it needs at least 128 px."""
    from sonosynth.segmentation.nets import build_unet

    with pytest.raises(SonosynthError, match="does not suit the 'deep' network"):
        SegmentationConfig(size=64, net_size="deep")
    SegmentationConfig(size=256, net_size="deep")
    net = build_unet("deep", 3)
    assert net(torch.zeros(1, 1, 128, 128)).shape == (1, 3, 128, 128)
    assert 1e6 < sum(p.numel() for p in net.parameters()) < 2e6


def test_min_steps_keeps_a_noisy_validation_from_stopping_at_once() -> None:
    from sonosynth.evaluation.downstream import converged
    from sonosynth.segmentation.common import EarlyStopping

    stopping = EarlyStopping(patience=2, snapshot=dict, min_steps=50)
    for step, score in ((10, 0.9), (20, 0.5), (30, 0.5)):
        stopping.steps = step
        stopping.check(step, 0.1, score)
    assert not stopping.stop  # two checks without improvement, but only 30 of 50 steps
    stopping.steps = 50
    assert stopping.stop
    # the best at the very first check is luck, not convergence; later, with patience behind it, it is
    assert not converged([{"val_dice": d} for d in (0.9, 0.5, 0.5, 0.5)], patience=2)
    assert converged([{"val_dice": d} for d in (0.5, 0.9, 0.5, 0.5)], patience=2)
