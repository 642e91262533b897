"""Which code made a result: the package version, and the git commit when it runs from a checkout."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

from sonosynth import __version__


@cache
def code_version() -> str:
    """`0.1.0+g1a2b3c4` (`+dirty` with uncommitted changes) in a git checkout, else the package version: recorded
    in every downstream cell, so a result page says which commit made each of its numbers."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "sonosynth"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" + ("-dirty" if dirty else "") if commit else __version__
