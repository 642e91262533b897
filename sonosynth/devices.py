"""Where the networks run: one place that turns `--device auto|cpu|cuda` into a torch device.

Every command that runs a network takes the same option, so a GPU is used end to end (or not at
all) and a missing GPU is a one-line error, not a CUDA traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sonosynth.errors import SonosynthError

if TYPE_CHECKING:  # the CLI imports DEVICE_HELP at start-up; torch loads only when a device is resolved
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "auto (a CUDA GPU when there is one), cpu or cuda."


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` picks CUDA when available; `cuda` without a GPU and unknown names are clear errors."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICE_CHOICES:
        raise SonosynthError(f"--device must be auto, cpu or cuda, got '{name}'")
    if name == "cuda" and not torch.cuda.is_available():
        raise SonosynthError("--device cuda: no CUDA GPU is available")
    return torch.device(name)
