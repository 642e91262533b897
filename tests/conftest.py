"""Shared fixtures: tiny synthetic datasets and the real HC18 folder (skipped when absent, except in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sonosynth.data.format import DatasetInfo, DatasetWriter

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test process: `make test` runs one pytest-xdist worker per core, and the
    tiny convolutions of the tests run many times slower on two contended threads than on one."""
    torch.set_num_threads(1)


def hc18_dir() -> Path:
    """HC18 lives outside the repo: $SONOSYNTH_DATA_DIR/hc18, else ../shared/data/hc18."""
    base = os.environ.get("SONOSYNTH_DATA_DIR")
    root = Path(base) if base else REPO.parent / "shared" / "data"
    return root / "hc18"


@pytest.fixture(scope="session")
def hc18() -> Path:
    path = hc18_dir()
    if not (path / "training_set").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"HC18 data not found at {path} (required under CI=true)")
        pytest.skip(f"HC18 data not found at {path}; set SONOSYNTH_DATA_DIR to the folder holding hc18/")
    return path


def ellipse_pair(rng: np.random.Generator, height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A speckled image with a bright ellipse and its filled-ellipse mask (label 1)."""
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.4, 0.6) * height, rng.uniform(0.4, 0.6) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    image = rng.rayleigh(40.0, size=(height, width)) + 80.0 * inside
    return np.clip(image, 1, 255).astype(np.uint8), inside.astype(np.uint8)


def write_toy_dataset(out: Path, n: int = 6, seed: int = 0, height: int = 48, width: int = 64) -> Path:
    """A tiny one-label dataset for tests that need any valid dataset folder."""
    rng = np.random.default_rng(seed)
    info = DatasetInfo(name="toy", labels={"0": "background", "1": "head"}, attributes={"view": ["a", "b"]})
    with DatasetWriter(out, info) as writer:
        for i in range(n):
            image, mask = ellipse_pair(rng, height, width)
            writer.add(f"toy_{i:03d}", image, mask, subject=f"s{i // 2}", spacing_mm=0.2, view="ab"[i % 2])
    return out


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Untrained MONAI U-Nets end in a zero conv; random weights make outputs depend on the inputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return write_toy_dataset(tmp_path / "toy")
