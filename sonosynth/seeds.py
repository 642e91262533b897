"""Seeds: every random draw in sonosynth flows from one user seed through these two functions."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from the run seed and a purpose, reproducible across processes and platforms."""
    words = [int(p) if isinstance(p, int) else int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little")
             for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def sample_seeds(seed: int, n: int) -> list[int]:
    """Independent per-sample seeds from one seed (recorded in the manifest for regeneration)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)]
