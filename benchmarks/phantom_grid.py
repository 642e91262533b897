"""The picture grid in docs/phantom.md: phantom images of the three domains next to their masks.

python benchmarks/phantom_grid.py [--out docs/images/phantom_grid.png] [--size 192] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from sonosynth.phantom.cases import generate_case
from sonosynth.phantom.dataset import case_rng

# Mask colours per label value (background black).
PALETTE = np.array([[0, 0, 0], [230, 80, 60], [80, 170, 240], [250, 210, 70]], dtype=np.uint8)
ROWS = [
    ("fetal-head", {}),
    ("fetal-head", {}),
    ("cardiac", {"phase": "ED"}),
    ("cardiac", {"phase": "ES"}),
    ("breast", {"pathology": "benign"}),
    ("breast", {"pathology": "malignant"}),
    ("breast", {"pathology": "normal"}),
]


def grid(size: int, seed: int, columns: int = 2, gap: int = 4) -> np.ndarray:
    """Rows of (image, mask, image, mask, ...) tiles, RGB."""
    tiles = []
    for row, (domain, options) in enumerate(ROWS):
        cells = []
        for col in range(columns):
            image, mask, _ = generate_case(domain, size, case_rng(seed, row * columns + col), **options)
            cells += [np.repeat(image[..., None], 3, axis=2), PALETTE[mask]]
        tiles.append(cells)
    height, width = size, size
    out = np.full((len(tiles) * (height + gap) - gap, 2 * columns * (width + gap) - gap, 3), 255, np.uint8)
    for r, cells in enumerate(tiles):
        for c, cell in enumerate(cells):
            out[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = cell
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = Path(__file__).resolve().parents[1] / "docs" / "images" / "phantom_grid.png"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid(args.size, args.seed)).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
