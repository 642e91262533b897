"""The README picture (docs/images/overview.png): masks, generated images and real images side by side.

Two sources:

    # rows of (mask | generated | real) from a synthetic dataset made with `sonosynth generate --masks train`:
    # each generated image sits next to the real image whose mask conditioned it (manifest `source_id`)
    python docs/make_overview.py --synthetic synthetic/hc18 --real data/hc18 [--n 4]

    # provisional picture without a trained model: rows of (mask | phantom image) from the simulator
    python docs/make_overview.py --phantom [--n 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sonosynth.data.format import Dataset
from sonosynth.errors import SonosynthError

DEFAULT_OUT = Path(__file__).resolve().parent / "images" / "overview.png"
# Mask colours per label value (background black), the same as docs/images/phantom_grid.png.
PALETTE = np.array([[0, 0, 0], [230, 80, 60], [80, 170, 240], [250, 210, 70]], dtype=np.uint8)
PHANTOM_ROWS = [("fetal-head", {}), ("cardiac", {"phase": "ED"}), ("breast", {"pathology": "malignant"})]


def colour_mask(mask: np.ndarray) -> np.ndarray:
    return PALETTE[np.clip(mask, 0, len(PALETTE) - 1)]


def grey_to_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=2)


def rows_from_synthetic(synthetic: Path, real: Path, n: int) -> list[list[np.ndarray]]:
    """(mask, generated, real) for the first `n` pairs generated from unmodified real masks."""
    synth, reference = Dataset.open(synthetic), Dataset.open(real)
    real_by_id = {record.id: index for index, record in enumerate(reference.records)}
    rows = []
    for sample in synth:
        extra = sample.record.extra
        if extra.get("mask_source") != "train" or extra.get("source_id") not in real_by_id:
            continue
        original = reference[real_by_id[extra["source_id"]]]
        rows.append([colour_mask(sample.mask), grey_to_rgb(sample.image), grey_to_rgb(original.image)])
        if len(rows) == n:
            return rows
    raise SonosynthError(f"{synthetic}: fewer than {n} pairs made from '{real}' masks with `--masks train` "
                         f"(found {len(rows)})")


def rows_from_phantom(n: int, size: int, seed: int) -> list[list[np.ndarray]]:
    """(mask, phantom image) for `n` simulated cases, cycling through the three domains."""
    from sonosynth.phantom.cases import generate_case
    from sonosynth.phantom.dataset import case_rng

    rows = []
    for index in range(n):
        domain, options = PHANTOM_ROWS[index % len(PHANTOM_ROWS)]
        image, mask, _ = generate_case(domain, size, case_rng(seed, index), **options)
        rows.append([colour_mask(mask), grey_to_rgb(image)])
    return rows


def compose(rows: list[list[np.ndarray]], headers: list[str], height: int = 160, gap: int = 4) -> np.ndarray:
    """One picture: a header line, then every row's tiles scaled to `height` (aspect kept) side by side."""
    scaled = [[np.asarray(Image.fromarray(tile).resize((round(tile.shape[1] * height / tile.shape[0]), height),
                                                       Image.NEAREST if k == 0 else Image.BILINEAR))
               for k, tile in enumerate(row)] for row in rows]
    widths = [max(row[k].shape[1] for row in scaled) for k in range(len(headers))]
    header = 18
    canvas = np.full((header + len(scaled) * (height + gap) - gap, sum(widths) + gap * (len(widths) - 1), 3), 255,
                     np.uint8)
    for r, row in enumerate(scaled):
        x = 0
        for k, tile in enumerate(row):
            y = header + r * (height + gap)
            canvas[y:y + height, x:x + tile.shape[1]] = tile
            x += widths[k] + gap
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    x = 0
    for k, title in enumerate(headers):
        draw.text((x + 4, 3), title, fill=(0, 0, 0))
        x += widths[k] + gap
    return np.asarray(picture)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=Path, help="synthetic dataset from `sonosynth generate --masks train`")
    parser.add_argument("--real", type=Path, help="the real dataset its masks came from")
    parser.add_argument("--phantom", action="store_true", help="provisional picture: mask | phantom image")
    parser.add_argument("--n", type=int, default=3, help="rows")
    parser.add_argument("--size", type=int, default=160, help="phantom image side / row height in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.phantom:
        rows, headers = rows_from_phantom(args.n, args.size, args.seed), ["mask", "phantom image (simulated)"]
    elif args.synthetic and args.real:
        try:
            rows, headers = rows_from_synthetic(args.synthetic, args.real, args.n), ["mask", "generated", "real"]
        except SonosynthError as exc:
            sys.exit(f"error: {exc}")
    else:
        parser.error("give --synthetic and --real, or --phantom")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(compose(rows, headers, height=args.size)).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
