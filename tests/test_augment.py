"""The one augmentation pipeline: geometry shared by image and masks, per-item seeds, presets, configs."""

from __future__ import annotations

import math
import pickle
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from factories import write_toy_dataset
from typer.testing import CliRunner

from sonosynth.augment import PRESETS, Augmentation, AugmentConfig
from sonosynth.cli import app
from sonosynth.diffusion.config import TrainConfig
from sonosynth.errors import SonosynthError
from sonosynth.models.denoiser import coordinate_channels
from sonosynth.segmentation.common import SegmentationConfig
from sonosynth.training.stream import random_crop

SIZE = 32
GEOMETRY = ("affine_prob", "elastic_prob")
INTENSITY = tuple(f.name for f in fields(AugmentConfig)
                  if f.name.endswith("_prob") and f.name not in (*GEOMETRY, "flip_prob"))


def with_probs(geometry: float, intensity: float) -> AugmentConfig:
    return replace(AugmentConfig.preset("classical"), **{n: geometry for n in GEOMETRY},
                   **{n: intensity for n in INTENSITY})


def toy_batch(label_values: tuple[int, ...] = (1, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    """Four masks with a box (first label) holding a smaller box (second); image = label - 1."""
    labels = torch.zeros(4, SIZE, SIZE, dtype=torch.long)
    for i in range(4):
        labels[i, 6 + i : 24, 5 : 22 + i] = label_values[0]
        labels[i, 12 : 18 + i, 10 + i : 17] = label_values[-1]
    return labels[:, None].float() - 1, labels


def augment(config: AugmentConfig, seed: int = 0, labels: tuple[int, ...] = (1, 2)):
    images, masks = toy_batch(labels)
    return Augmentation(config, SIZE).batch(images, masks, [seed * 10 + i for i in range(4)])


@pytest.mark.parametrize("preset", ["gentle", "light", "classical"])
def test_geometry_moves_image_and_masks_together(preset: str) -> None:
    _, masks = toy_batch()
    geometry = replace(AugmentConfig.preset(preset), probability=1.0, **{n: 0.0 for n in INTENSITY})
    for config in (geometry, replace(geometry, elastic_prob=1.0)):
        images, labels = augment(config, seed=5)
        assert not torch.equal(labels, masks)  # something moved
        decoded = (images[:, 0] + 1).round().long()  # the image encodes the label
        assert (decoded == labels).float().mean() > 0.97


def test_field_of_view_moves_with_the_image_and_padding_is_black() -> None:
    image = torch.full((1, SIZE, SIZE), 0.5)
    masks = torch.stack([torch.zeros(SIZE, SIZE), torch.ones(SIZE, SIZE)])  # label map, fov
    config = AugmentConfig(affine_prob=1.0, rotate_deg=(30.0, 30.0), scale=(0.8, 0.8))
    out, moved = Augmentation(config, SIZE)(image, masks, seed=0)
    outside = moved[1] == 0
    assert outside.any() and moved.dtype == masks.dtype
    assert (out[0][outside] < -0.9).float().mean() > 0.9  # out of view is black (bar the blended rim)
    assert (out[0][moved[1] == 1] > 0.4).float().mean() > 0.9 and out[0][moved[1] == 1].mean() > 0.45


def test_an_item_depends_on_its_seed_only() -> None:
    augmentation = Augmentation(with_probs(1.0, 1.0), SIZE)
    images, masks = toy_batch()
    first = augmentation(images[0], masks[:1], seed=3)
    for other in range(5):  # other items in between (another order, another history)
        augmentation(images[1], masks[1:2], seed=other)
    again = Augmentation(with_probs(1.0, 1.0), SIZE)(images[0], masks[:1], seed=3)
    assert torch.equal(first[0], augmentation(images[0], masks[:1], seed=3)[0])
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    different = augmentation(images[0], masks[:1], seed=4)
    assert not torch.equal(first[0], different[0]) and not torch.equal(first[1], different[1])


def test_pipeline_pickles_for_data_loader_workers() -> None:
    augmentation = Augmentation(AugmentConfig.preset("gentle"), SIZE)
    copy = pickle.loads(pickle.dumps(augmentation))
    images, masks = toy_batch()
    assert torch.equal(copy(images[0], masks[:1], 7)[0], augmentation(images[0], masks[:1], 7)[0])


@pytest.mark.parametrize("config", [AugmentConfig.preset("classical"), with_probs(1.0, 1.0),
                                    AugmentConfig.preset("gentle"), AugmentConfig.preset("light")],
                         ids=["classical", "all-on", "gentle", "light"])
def test_range_dtype_and_label_contracts(config: AugmentConfig) -> None:
    for seed in range(3):
        images, labels = augment(config, seed=seed, labels=(2, 5))
        assert images.shape == (4, 1, SIZE, SIZE) and images.dtype == torch.float32
        assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
        assert labels.shape == (4, SIZE, SIZE) and labels.dtype == torch.int64
        assert set(labels.unique().tolist()) <= {0, 2, 5}


def test_intensity_transforms_leave_the_mask_untouched_and_black_black() -> None:
    before, masks = toy_batch()
    images, labels = augment(with_probs(0.0, 1.0), seed=1)
    assert torch.equal(labels, masks)
    assert not torch.equal(images, before)
    assert (images[:, 0, :3] == -1).all()  # noise and gains stay off the black background


def test_depth_gain_rises_from_top_to_bottom() -> None:
    image = torch.zeros(1, SIZE, SIZE)  # 0.5 brightness
    config = AugmentConfig(depth_gain_prob=1.0, depth_gain=(0.5, 0.5))
    out, _ = Augmentation(config, SIZE)(image, torch.zeros(1, SIZE, SIZE), seed=0)
    brightness = (out[0] + 1) / 2
    assert brightness[0].mean() == pytest.approx(0.5 * 0.75, abs=1e-6)  # top row: 1 - 0.5 * 0.5
    assert brightness[-1].mean() == pytest.approx(0.5 * 1.25, abs=1e-6)
    assert torch.all(brightness[1:].mean(1) > brightness[:-1].mean(1))


def test_off_switches_and_flip() -> None:
    images, masks = toy_batch()
    for off in (AugmentConfig.preset("none"), replace(AugmentConfig.preset("classical"), probability=0.0),
                AugmentConfig()):
        assert not off.active
        out = Augmentation(off, SIZE).batch(images, masks, [0, 1, 2, 3])
        assert torch.equal(out[0], images) and torch.equal(out[1], masks)
    flipped = Augmentation(AugmentConfig(flip_prob=1.0), SIZE).batch(images, masks, [0, 1, 2, 3])
    assert torch.equal(flipped[1], masks.flip(-1))
    assert torch.allclose(flipped[0], images.flip(-1))
    # probability 0.8: about one item in five is left exactly as it was
    gentle = Augmentation(AugmentConfig.preset("gentle"), SIZE)
    untouched = sum(torch.equal(gentle(images[0], masks[:1], s)[0], images[0]) for s in range(200))
    assert 20 <= untouched <= 60


def test_presets_and_preset_files(tmp_path: Path) -> None:
    assert set(PRESETS) == {"none", "gentle", "light", "classical"}
    changed = AugmentConfig.from_dict({"preset": "gentle", "flip_prob": 0.5})
    assert changed == replace(AugmentConfig.preset("gentle"), flip_prob=0.5)
    assert AugmentConfig.from_dict(changed.to_dict()) == changed  # to_dict is complete: no preset needed
    with pytest.raises(SonosynthError, match="unknown augmentation preset 'strong'"):
        AugmentConfig.from_dict({"preset": "strong"})
    ranges = tmp_path / "ranges.yaml"
    ranges.write_text("rotate_deg: [-3, 3]\n")
    assert AugmentConfig.preset_file("classical", ranges) == replace(AugmentConfig.preset("classical"),
                                                                     rotate_deg=(-3, 3))
    assert AugmentConfig.preset_file("classical", None) == AugmentConfig.preset("classical")
    # The generator's default, in its training config
    assert TrainConfig().augment == AugmentConfig.preset("gentle")
    assert TrainConfig.from_dict({"augment": {"preset": "none"}}).augment.active is False


def test_the_generators_former_settings_still_load() -> None:
    """RUN/config.yaml of runs saved before the MONAI pipeline: scalar magnitudes, `enabled`, `hflip`, `gamma`."""
    old_defaults = {"enabled": True, "probability": 0.8, "rotate_deg": 5.0, "scale": 0.05, "translate": 0.03,
                    "gain": 0.15, "depth_gain": 0.15, "gamma": 0.15, "hflip": 0.0}
    assert AugmentConfig.from_dict(old_defaults) == AugmentConfig.preset("gentle")
    flipped = AugmentConfig.from_dict({**old_defaults, "hflip": 0.5, "rotate_deg": 2.0})
    assert flipped.flip_prob == 0.5 and flipped.rotate_deg == (-2.0, 2.0)
    assert flipped.contrast_gamma == pytest.approx((math.exp(-0.15), math.exp(0.15)))
    assert not AugmentConfig.from_dict({**old_defaults, "enabled": False}).active
    assert TrainConfig.from_dict({"augment": {"hflip": 0.5}}).augment.flip_prob == 0.5
    with pytest.raises(SonosynthError, match=r"unknown augmentation fields \['spin'\]"):
        AugmentConfig.from_dict({**old_defaults, "spin": 1})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"spin": 1}, r"unknown augmentation fields \['spin'\]"),
        ({"noise_prob": 1.5}, r"noise_prob must lie within \[0.0, 1.0\]"),
        ({"probability": -0.1}, r"probability must lie within \[0.0, 1.0\]"),
        ({"scale": [1.2, 0.8]}, r"scale must be ordered \(low <= high\)"),
        ({"blur_sigma": 0.5}, r"blur_sigma must be a pair"),
        ({"dropout_holes": [1.5, 2]}, r"dropout_holes must be a pair of integers"),
        ({"histogram_shift_points": [2, 5]}, r"histogram_shift_points must lie within \[3, 100\]"),
    ],
)
def test_config_rejects_unknown_keys_and_bad_ranges(settings: dict, message: str) -> None:
    with pytest.raises(SonosynthError, match=message):
        AugmentConfig.from_dict(settings)
    data = yaml.safe_load(SegmentationConfig(classical=AugmentConfig.preset("classical")).to_yaml())
    data["classical"].update(settings)
    with pytest.raises(SonosynthError, match=message):
        SegmentationConfig.from_dict(data)


def test_segmenter_config_round_trips_and_older_classical_ranges_load() -> None:
    config = SegmentationConfig(classical=replace(AugmentConfig.preset("classical"), rotate_deg=(-5.0, 5.0)))
    loaded = SegmentationConfig.from_dict(yaml.safe_load(config.to_yaml()))
    assert loaded == config and isinstance(loaded.classical, AugmentConfig)
    old = yaml.safe_load(SegmentationConfig().to_yaml())
    del old["classical"]  # a config saved before the field existed
    assert SegmentationConfig.from_dict(old).classical is None
    # classical ranges saved before the pipeline was shared lack the new settings: they stay off
    saved = AugmentConfig.preset("classical").to_dict()
    for name in ("probability", "flip_prob", "gain_prob", "gain", "depth_gain_prob", "depth_gain"):
        del saved[name]
    assert AugmentConfig.from_dict(saved) == AugmentConfig.preset("classical")


def test_classical_needs_augmentation_on() -> None:
    with pytest.raises(SonosynthError, match="needs augmentation on"):
        SegmentationConfig(augment=False, classical=AugmentConfig.preset("classical"), labels={"0": "bg", "1": "a"})


def test_cli_classical_config_file_changes_the_classical_ranges(tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy", n=6)
    ranges = tmp_path / "ranges.yaml"
    ranges.write_text("rotate_deg: [-3, 3]\nelastic_prob: 0.0\n")
    args = ["segment", "train", "--auto-split", str(data), "--size", "32", "--net-size", "tiny", "--max-steps", "2",
            "--val-every", "2", "--batch-size", "2", "--classical-config", str(ranges), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = SegmentationConfig.from_yaml(tmp_path / "run" / "config.yaml").classical
    assert saved == replace(AugmentConfig.preset("classical"), rotate_deg=(-3, 3), elastic_prob=0.0)

    ranges.write_text("rotate: 3\n")
    result = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "run2")])
    assert isinstance(result.exception, SonosynthError)
    assert "ranges.yaml: unknown augmentation fields ['rotate']" in str(result.exception)


def _crop_item(size: int = 48) -> dict[str, torch.Tensor]:
    image = torch.rand(1, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return {"image": image, "label": (image[0] > 0).long(), "fov": torch.ones(1, size, size),
            "coords": coordinate_channels(1, size)[0]}


def test_random_crop_cuts_the_same_window_everywhere() -> None:
    item = _crop_item()
    out = random_crop(item, 16, torch.Generator().manual_seed(1))
    assert out["image"].shape == (1, 16, 16) and out["label"].shape == (16, 16) and out["coords"].shape == (2, 16, 16)
    # The coordinate channels tell where the window was: find it and check image and label agree.
    ramp = torch.linspace(-1, 1, 48)
    top = int(torch.argmin((ramp - out["coords"][0, 0, 0]).abs()))
    left = int(torch.argmin((ramp - out["coords"][1, 0, 0]).abs()))
    assert torch.equal(out["image"], item["image"][:, top : top + 16, left : left + 16])
    assert torch.equal(out["label"], item["label"][top : top + 16, left : left + 16])
    tops = {int(random_crop(item, 16, torch.Generator().manual_seed(s))["coords"][0, 0, 0] * 100) for s in range(8)}
    assert len(tops) > 1


def _statistics(config: AugmentConfig, batched: bool, n: int = 400) -> np.ndarray:
    """Per item: mean brightness ratio, bottom/top brightness ratio, contrast of a ramp, the fov's kept area and
    its centroid (row, column), the image's left-right asymmetry: what each transform changes."""
    ramp = torch.linspace(-0.6, 0.6, SIZE).view(1, 1, SIZE).expand(1, SIZE, SIZE).clone()
    fov = torch.zeros(SIZE, SIZE)
    fov[4:28, 6:26] = 1
    masks = torch.stack([fov.long(), fov.long()])
    augmentation = Augmentation(config, SIZE, batched=batched)
    rows = []
    for seed in range(n):
        image, moved = augmentation(ramp, masks, seed)
        unit = (image[0] + 1) / 2
        where = moved[1].nonzero().float()
        centre = where.mean(0) if len(where) else torch.zeros(2)
        rows.append([float(unit.mean() / ((ramp + 1) / 2).mean()),
                     float(unit[-4:].mean() / unit[:4].mean().clamp_min(1e-6)),
                     float(unit.std()), float(moved[1].float().mean()), *centre.tolist(),
                     float(unit[:, : SIZE // 2].mean() - unit[:, SIZE // 2 :].mean())])
    return np.array(rows)


@pytest.mark.parametrize("preset", ["gentle", "light"])
def test_batched_transforms_draw_as_the_monai_pipeline_does(preset: str) -> None:
    """The batched path (gentle, light) against MONAI item by item: each statistic's mean and spread over 400
    seeds agree within a few standard errors (the draws differ, the distributions may not)."""
    config = replace(AugmentConfig.preset(preset), flip_prob=0.5)
    assert Augmentation(config, SIZE).batched is not None and Augmentation(config, SIZE, batched=False).batched is None
    ours, monai = _statistics(config, True), _statistics(config, False)
    names = ["brightness", "depth ratio", "contrast", "fov area", "fov row", "fov column", "asymmetry"]
    for k, name in enumerate(names):
        a, b = ours[:, k], monai[:, k]
        standard_error = np.sqrt(a.var() / len(a) + b.var() / len(b)) + 1e-9
        assert abs(a.mean() - b.mean()) < 4 * standard_error + 1e-3, (name, a.mean(), b.mean())
        assert abs(a.std() - b.std()) < 0.2 * max(a.std(), b.std()) + 1e-3, (name, a.std(), b.std())
