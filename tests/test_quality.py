"""Image-quality measures on phantom data: distances, diversity, intensity, memorisation, report."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from sonosynth.data.format import Dataset, DatasetWriter
from sonosynth.errors import SonosynthError
from sonosynth.evaluation.quality import (
    QualityConfig,
    evaluate_quality,
    frechet_distance,
    histogram_distances,
    kernel_distance,
    mean_pairwise_ms_ssim,
    ms_ssim_weights,
    texture_features,
)
from sonosynth.phantom.dataset import write_phantom_dataset
from sonosynth.segmentation.common import SegmentationConfig
from sonosynth.segmentation.train import train_from_folders

SMALL = QualityConfig(size=32, memorisation_size=16, max_pairs=20, kid_subsets=5, kid_subset_size=8)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quality")
    real = write_phantom_dataset(root / "real", "fetal-head", 12, 48, seed=0)
    fresh = write_phantom_dataset(root / "fresh", "fetal-head", 8, 48, seed=1)
    # A "generator" that memorised: exact copies of four real images plus slight noise.
    source = Dataset.open(real)
    rng = np.random.default_rng(0)
    with DatasetWriter(root / "copies", source.info) as writer:
        for sample in list(source)[:4]:
            noisy = np.clip(sample.image.astype(int) + rng.integers(-2, 3, sample.image.shape), 0, 255)
            writer.add(f"copy_{sample.id}", noisy.astype(np.uint8), sample.mask, hc_mm="1")
    return {"real": real, "fresh": fresh, "copies": root / "copies"}


def test_distances_are_zero_for_a_set_and_grow_for_another_distribution() -> None:
    rng = np.random.default_rng(0)
    speckle = rng.rayleigh(0.2, size=(24, 32, 32)).clip(0, 1).astype(np.float32)
    smooth = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (24, 32, 1))
    a, b = texture_features(speckle), texture_features(smooth)
    assert a.shape[0] == 24 and np.isfinite(a).all()
    assert np.array_equal(a, texture_features(speckle))  # deterministic, no weights
    mu, sd = a.mean(0), a.std(0) + 1e-8
    same = frechet_distance((a - mu) / sd, (a - mu) / sd)
    other = frechet_distance((b - mu) / sd, (a - mu) / sd)
    assert same == pytest.approx(0.0, abs=1e-6) and other > 10.0
    kid_other, _ = kernel_distance((a - mu) / sd, (b - mu) / sd, subsets=5, subset_size=10, seed=0)
    kid_half, _ = kernel_distance((a[:12] - mu) / sd, (a[12:] - mu) / sd, subsets=5, subset_size=10, seed=0)
    assert kid_other > 10 * abs(kid_half)


def test_ms_ssim_fits_small_images_and_measures_diversity() -> None:
    for size in (16, 32, 64, 128):
        kernel, weights = ms_ssim_weights(size)
        assert size > (kernel - 1) * 2 ** (len(weights) - 1) and sum(weights) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    one = rng.random((32, 32)).astype(np.float32)
    clones = np.stack([one] * 4)
    varied = rng.random((4, 32, 32)).astype(np.float32)
    assert mean_pairwise_ms_ssim(clones, 10, 0)[0] == pytest.approx(1.0, abs=1e-4)
    assert mean_pairwise_ms_ssim(varied, 10, 0)[0] < 0.5
    assert mean_pairwise_ms_ssim(varied, 2, 0)[1] == 2


def test_histogram_distance() -> None:
    p = np.zeros(64)
    p[10] = 1
    q = np.zeros(64)
    q[42] = 1
    assert histogram_distances(p, p) == {"wasserstein": 0.0, "jensen_shannon": 0.0}
    assert histogram_distances(p, q)["wasserstein"] == pytest.approx(32 / 64)


def test_memorised_copies_are_flagged_and_new_images_are_not(phantoms: dict[str, Path], tmp_path: Path) -> None:
    copies = evaluate_quality(phantoms["real"], phantoms["copies"], tmp_path / "copies", SMALL, progress=False)
    fresh = evaluate_quality(phantoms["real"], phantoms["fresh"], tmp_path / "fresh", SMALL, progress=False)
    copied = json.loads((copies / "quality.json").read_text())["memorisation"]
    new = json.loads((fresh / "quality.json").read_text())["memorisation"]
    assert copied["near_copies"] == 4 and copied["median_synthetic_pixel_ratio"] < 0.2
    assert new["near_copies"] == 0 and new["median_synthetic_pixel_ratio"] > 0.6
    with open(copies / "memorisation.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["nearest_real"] for r in rows} == {r["id"].removeprefix("copy_") for r in rows}


def test_full_report_with_segmenter(phantoms: dict[str, Path], tmp_path: Path) -> None:
    segrun = train_from_folders(
        phantoms["real"], tmp_path / "seg",
        SegmentationConfig(size=32, net="tiny", max_steps=6, val_every=3, batch_size=4), progress=False,
        auto_split=True)
    out = evaluate_quality(phantoms["real"], phantoms["fresh"], tmp_path / "q", SMALL, segmenter_path=segrun,
                           command="sonosynth evaluate quality ...", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["memorisation.csv", "quality.json", "quality.md", "report.html"]
    result = json.loads((out / "quality.json").read_text())
    assert result["distribution"]["comparable_to_published"] is False
    assert result["distribution"]["fid"] >= 0.0 and np.isfinite(result["distribution"]["kid_mean"])
    fidelity = result["mask_fidelity"]["synthetic"]
    assert fidelity["n_images"] == 8 and 0.0 <= fidelity["dice"]["1"]["mean"] <= 1.0
    # One fidelity score: the report's per-image value is the one `sonosynth generate` records.
    from sonosynth.data.format import Dataset
    from sonosynth.synthesis.fidelity import score_samples, segmenter_predictor

    pairs = list(Dataset.open(phantoms["fresh"]))
    predictor, labels = segmenter_predictor(segrun)
    expected = score_samples([p.image for p in pairs], [p.mask for p in pairs], predictor, labels)
    assert [p["fidelity_dice"] for p in fidelity["per_image"]] == pytest.approx(expected)
    assert 0.0 < result["diversity"]["ms_ssim_real"] < 1.0
    assert result["intensity"]["real"]["speckle_snr"]["mean"] > 0
    markdown = (out / "quality.md").read_text()
    assert "NOT on Inception features: not comparable to published FID/KID" in markdown
    assert "| synthetic | 1 |" in markdown
    page = (out / "report.html").read_text()
    assert page.count("<table>") >= 4 and page.count("data:image/png;base64,") == 3


def test_inception_weights_come_from_the_local_path(phantoms: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """The real pt_inception weights cannot be downloaded here: a stand-in extractor checks the plumbing."""
    weights = tmp_path / "pt_inception-2015-12-05.pth"
    weights.write_bytes(b"stand-in")
    seen: dict[str, object] = {}

    class StandInInception(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__()
            seen.update(path=feature_extractor_weights_path, features=features_list)

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            return (x.float().mean(dim=(2, 3)).repeat(1, 8),)

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = StandInInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    out = evaluate_quality(phantoms["real"], phantoms["fresh"], tmp_path / "q", SMALL, inception_path=weights,
                           progress=False)
    assert seen == {"path": str(weights), "features": ["2048"]}
    distribution = json.loads((out / "quality.json").read_text())["distribution"]
    assert distribution["comparable_to_published"] is True and "pt_inception" in distribution["features"]
    with pytest.raises(SonosynthError, match="weights file not found"):
        evaluate_quality(phantoms["real"], phantoms["fresh"], tmp_path / "q2", SMALL,
                         inception_path=tmp_path / "missing.pth", progress=False)
    assert not (tmp_path / "q2").exists()


def test_mismatched_labels_are_refused(phantoms: dict[str, Path], tmp_path: Path) -> None:
    cardiac = write_phantom_dataset(tmp_path / "cardiac", "cardiac", 2, 48, seed=0)
    if Dataset.open(cardiac).info.num_labels == 2:
        pytest.skip("cardiac phantom has the same label count")
    with pytest.raises(SonosynthError, match="do not match"):
        evaluate_quality(phantoms["real"], cardiac, tmp_path / "q", SMALL, progress=False)
