"""The install that `make` builds holds the CPU torch pin (constraints.txt), whatever the dependencies ask for."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _pinned_torch() -> str:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = [line.split("==", 1)[1].strip() for line in lines if line.startswith("torch==")]
    assert len(pins) == 1, "constraints.txt must pin torch exactly once"
    return pins[0]


@pytest.mark.skipif(Path(sys.prefix).resolve() != (REPO / ".venv").resolve(),
                    reason="not the venv `make` builds (users may run any torch >= 2.4)")
def test_the_make_venv_has_the_pinned_cpu_torch():
    import torch

    assert torch.__version__.split("+")[0] == _pinned_torch()
    assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build; the pin is the CPU build"


def test_the_makefile_installs_every_package_under_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
