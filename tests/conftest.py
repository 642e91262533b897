"""Shared fixtures: tiny synthetic datasets and the real HC18, BUSI and CAMUS-224 folders (skipped when absent,
except in CI)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from sonosynth.data.format import DatasetInfo, DatasetWriter

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test process: `make test` runs one pytest-xdist worker per core, and the
    tiny convolutions of the tests run many times slower on two contended threads than on one."""
    torch.set_num_threads(1)


def data_dir(name: str) -> Path:
    """Real data lives outside the repo: $SONOSYNTH_DATA_DIR/<name>, else ../shared/data/<name>."""
    base = os.environ.get("SONOSYNTH_DATA_DIR")
    root = Path(base) if base else REPO.parent / "shared" / "data"
    return root / name


def require_data(name: str, inside: str, title: str) -> Path:
    """data_dir(name) if it holds `inside`; else skip the test, or fail it under CI=true."""
    path = data_dir(name)
    if not (path / inside).is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{title} data not found at {path} (required under CI=true)")
        pytest.skip(f"{title} data not found at {path}; set SONOSYNTH_DATA_DIR to the folder holding {name}/")
    return path


@pytest.fixture(scope="session")
def hc18() -> Path:
    return require_data("hc18", "training_set", "HC18")


@pytest.fixture(scope="session")
def busi() -> Path:
    """The BUSI development subset's Dataset_BUSI_with_GT folder (holding benign/, malignant/, normal/)."""
    return require_data("busi", "Dataset_BUSI_with_GT/benign", "BUSI") / "Dataset_BUSI_with_GT"


@pytest.fixture(scope="session")
def camus224() -> Path:
    """The CAMUS-224 folder (holding images/patientNNNN_<view>_<phase>[_gt].png)."""
    return require_data("camus-224", "images", "CAMUS-224")


def imported_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """`make(out)` run once per test session (real imports are slow), shared by xdist workers through a lock."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out = base / name
    with FileLock(str(out) + ".lock"):
        if not out.exists():
            make(out)
    return out


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


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return write_toy_dataset(tmp_path / "toy")
