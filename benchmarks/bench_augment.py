"""Cost of the augmentation presets per batch, at the sizes models train at: MONAI item by item vs batched.

Times `Augmentation.batch` on letterboxed-like items (image, label map) with a fresh seed per item, as the
segmenter's training does, once through MONAI item by item (`batched=False`) and once through the batched
torch path that the gentle and light presets take (classical has no batched path: its two columns are both
MONAI), and prints ms per batch of `--batch`. Compare with the network's step time
(`benchmarks/bench_training.py`) to see what share of a training step augmentation takes.

    .venv/bin/python benchmarks/bench_augment.py                  # all presets, 64 and 256 px
    .venv/bin/python benchmarks/bench_augment.py --px 64 --batches 100
"""

from __future__ import annotations

import argparse
import time

import torch

from sonosynth.augment import PRESETS, Augmentation, AugmentConfig


def ms_per_batch(preset: str, px: int, batches: int, batch: int, batched: bool) -> float:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 1, px, px, generator=generator) * 2 - 1
    labels = (torch.rand(batch, px, px, generator=generator) > 0.5).long()
    augmentation = Augmentation(AugmentConfig.preset(preset), px, batched=batched)
    augmentation.batch(images, labels, list(range(batch)))  # warm-up (imports, caches)
    start = time.perf_counter()
    for b in range(1, batches + 1):
        augmentation.batch(images, labels, list(range(b * batch, (b + 1) * batch)))
    return (time.perf_counter() - start) / batches * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(p for p in PRESETS if p != "none"))
    parser.add_argument("--px", default="64,256")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| preset | px | MONAI item by item, ms / batch of {args.batch} | batched, ms / batch | speed-up |")
    print("|---|---|---|---|---|")
    for px in (int(p) for p in args.px.split(",")):
        for preset in args.presets.split(","):
            monai = ms_per_batch(preset, px, args.batches, args.batch, batched=False)
            ours = ms_per_batch(preset, px, args.batches, args.batch, batched=True)
            print(f"| {preset} | {px} | {monai:.1f} | {ours:.1f} | {monai / ours:.1f}x |")

if __name__ == "__main__":
    main()
