"""Shared fixtures: tiny synthetic datasets and the real HC18, BUSI and CAMUS-224 folders (skipped when absent,
except in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from factories import write_toy_dataset

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


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return write_toy_dataset(tmp_path / "toy")
