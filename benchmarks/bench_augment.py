"""Cost of the augmentation presets per item and per batch, at the sizes models train at.

Times `Augmentation` (the one MONAI pipeline) on a letterboxed-like item (image, label map, field of
view) with a fresh seed per item, as training does, and prints a table: ms per item and per batch of
`--batch`. Compare with the network's step time (`benchmarks/bench_training.py`) to see what share of
a training step augmentation takes; `num_workers` in the training config moves it off the main process.

    .venv/bin/python benchmarks/bench_augment.py                  # all presets, 64 and 256 px
    .venv/bin/python benchmarks/bench_augment.py --px 64 --items 500
"""

from __future__ import annotations

import argparse
import time

import torch

from sonosynth.augment import PRESETS, Augmentation, AugmentConfig


def ms_per_item(preset: str, px: int, items: int) -> float:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, px, px, generator=generator) * 2 - 1
    masks = torch.stack([(torch.rand(px, px, generator=generator) > 0.5).float(), torch.ones(px, px)])
    augmentation = Augmentation(AugmentConfig.preset(preset), px)
    augmentation(image, masks, seed=0)  # warm-up (imports, caches)
    start = time.perf_counter()
    for seed in range(1, items + 1):
        augmentation(image, masks, seed=seed)
    return (time.perf_counter() - start) / items * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(p for p in PRESETS if p != "none"))
    parser.add_argument("--px", default="64,256")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| preset | px | ms / item | ms / batch of {args.batch} |")
    print("|---|---|---|---|")
    for px in (int(p) for p in args.px.split(",")):
        for preset in args.presets.split(","):
            ms = ms_per_item(preset, px, args.items)
            print(f"| {preset} | {px} | {ms:.2f} | {ms * args.batch:.1f} |")


if __name__ == "__main__":
    main()
