"""Strong classical (MONAI) augmentation: geometry shared by image and mask, seeding, contracts, config."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
import yaml
from factories import write_toy_dataset
from typer.testing import CliRunner

from sonosynth.cli import app
from sonosynth.errors import SonosynthError
from sonosynth.segmentation.classical import (
    ClassicalAugmentConfig,
    build_classical_transform,
    classical_augment_batch,
)
from sonosynth.segmentation.train import SegmentationConfig

SIZE = 32
GEOMETRY = ("affine_prob", "elastic_prob")
INTENSITY = tuple(f.name for f in fields(ClassicalAugmentConfig) if f.name.endswith("_prob") and f.name not in GEOMETRY)


def with_probs(geometry: float, intensity: float) -> ClassicalAugmentConfig:
    return ClassicalAugmentConfig(**{n: geometry for n in GEOMETRY}, **{n: intensity for n in INTENSITY})


def toy_batch(label_values: tuple[int, ...] = (1, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    """Four masks with a box (first label) holding a smaller box (second); image = label - 1."""
    labels = torch.zeros(4, SIZE, SIZE, dtype=torch.long)
    for i in range(4):
        labels[i, 6 + i : 24, 5 : 22 + i] = label_values[0]
        labels[i, 12 : 18 + i, 10 + i : 17] = label_values[-1]
    return labels[:, None].float() - 1, labels


def augment(config: ClassicalAugmentConfig, seed: int = 0, labels: tuple[int, ...] = (1, 2)):
    images, masks = toy_batch(labels)
    return classical_augment_batch(images, masks, build_classical_transform(config, SIZE, seed=seed))


def test_geometry_moves_image_and_mask_together() -> None:
    _, masks = toy_batch()
    for geometry in (ClassicalAugmentConfig(), replace(ClassicalAugmentConfig(), affine_prob=0.0)):
        config = replace(geometry, **{n: 0.0 for n in INTENSITY}, elastic_prob=1.0)
        images, labels = augment(config, seed=5)
        assert not torch.equal(labels, masks)  # something moved
        decoded = (images[:, 0] + 1).round().long()  # the image encodes the label
        assert (decoded == labels).float().mean() > 0.97


def test_same_seed_same_output_and_different_seed_differs() -> None:
    config = with_probs(1.0, 1.0)
    first, again, other = augment(config, seed=3), augment(config, seed=3), augment(config, seed=4)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


@pytest.mark.parametrize("config", [ClassicalAugmentConfig(), with_probs(1.0, 1.0)], ids=["defaults", "all-on"])
def test_range_dtype_and_label_contracts(config: ClassicalAugmentConfig) -> None:
    for seed in range(3):
        images, labels = augment(config, seed=seed, labels=(2, 5))
        assert images.shape == (4, 1, SIZE, SIZE) and images.dtype == torch.float32
        assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
        assert labels.shape == (4, SIZE, SIZE) and labels.dtype == torch.int64
        assert set(labels.unique().tolist()) <= {0, 2, 5}


def test_intensity_transforms_leave_the_mask_untouched() -> None:
    before, masks = toy_batch()
    images, labels = augment(with_probs(0.0, 1.0), seed=1)
    assert torch.equal(labels, masks)
    assert not torch.equal(images, before)
    assert (images[:, 0, :3] == -1).all()  # noise stays off the black background (masked Rician)


def test_config_round_trips_through_the_segmenter_yaml() -> None:
    config = SegmentationConfig(classical=ClassicalAugmentConfig(rotate_deg=(-5.0, 5.0), dropout_holes=(2, 4)))
    loaded = SegmentationConfig.from_dict(yaml.safe_load(config.to_yaml()))
    assert loaded == config and isinstance(loaded.classical, ClassicalAugmentConfig)
    assert loaded.classical.rotate_deg == (-5.0, 5.0)
    old = yaml.safe_load(SegmentationConfig().to_yaml())
    del old["classical"]  # a config saved before the field existed
    assert SegmentationConfig.from_dict(old).classical is None
    assert ClassicalAugmentConfig.from_dict(ClassicalAugmentConfig().to_dict()) == ClassicalAugmentConfig()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"spin": 1}, r"unknown classical augmentation fields \['spin'\]"),
        ({"noise_prob": 1.5}, r"noise_prob must lie within \[0.0, 1.0\]"),
        ({"scale": [1.2, 0.8]}, r"scale must be ordered \(low <= high\)"),
        ({"blur_sigma": 0.5}, r"blur_sigma must be a pair"),
        ({"dropout_holes": [1.5, 2]}, r"dropout_holes must be a pair of integers"),
        ({"histogram_shift_points": [2, 5]}, r"histogram_shift_points must lie within \[3, 100\]"),
    ],
)
def test_config_rejects_unknown_keys_and_bad_ranges(settings: dict, message: str) -> None:
    with pytest.raises(SonosynthError, match=message):
        ClassicalAugmentConfig.from_dict(settings)
    text = SegmentationConfig(classical=ClassicalAugmentConfig()).to_yaml()
    data = yaml.safe_load(text)
    data["classical"].update(settings)
    with pytest.raises(SonosynthError, match=message):
        SegmentationConfig.from_dict(data)


def test_classical_needs_augmentation_on() -> None:
    with pytest.raises(SonosynthError, match="needs augmentation on"):
        SegmentationConfig(augment=False, classical=ClassicalAugmentConfig(), labels={"0": "bg", "1": "a"})


def test_cli_classical_config_file_sets_the_ranges(tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy", n=6)
    ranges = tmp_path / "ranges.yaml"
    ranges.write_text("rotate_deg: [-3, 3]\nelastic_prob: 0.0\n")
    args = ["segment", "train", str(data), "--size", "32", "--net", "tiny", "--steps", "2", "--val-every", "2",
            "--batch-size", "2", "--classical-config", str(ranges), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = SegmentationConfig.from_yaml(tmp_path / "run" / "config.yaml").classical
    assert saved == ClassicalAugmentConfig(rotate_deg=(-3, 3), elastic_prob=0.0)

    ranges.write_text("rotate: 3\n")
    result = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "run2")])
    assert isinstance(result.exception, SonosynthError)
    assert "ranges.yaml: unknown classical augmentation fields ['rotate']" in str(result.exception)
