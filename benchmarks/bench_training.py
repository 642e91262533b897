"""Training throughput of the real loop (data, augmentation, forward/backward, AdamW, EMA) on this machine.

    python benchmarks/bench_training.py --models tiny small --sizes 64 128 --steps 8 --batch-size 8

Times optimizer steps through `sonosynth.diffusion.train.train` on a small phantom fetal-head
dataset; the first `--warmup` steps (allocation, caching of decoded pairs) and the last step (it
also writes the final checkpoint) are not timed. Prints a table of steps/s and images/s, and the
process CPU seconds per step (all threads), which is less sensitive to other load on the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def make_dataset(out: Path, n: int, size: int) -> Path:
    try:
        from sonosynth.phantom.dataset import write_phantom_dataset

        return write_phantom_dataset(out, "fetal-head", n=n, size=size, seed=0)
    except ImportError:  # fall back to plain ellipses
        import numpy as np

        from sonosynth.data.format import DatasetInfo, DatasetWriter

        rng = np.random.default_rng(0)
        info = DatasetInfo(name="ellipses", labels={"0": "background", "1": "head"})
        yy, xx = np.mgrid[0:size, 0:size]
        with DatasetWriter(out, info) as writer:
            for i in range(n):
                inside = ((yy - size / 2) / (0.3 * size)) ** 2 + ((xx - size / 2) / (0.25 * size)) ** 2 <= 1
                image = np.clip(rng.rayleigh(40, (size, size)) + 80 * inside, 1, 255).astype(np.uint8)
                writer.add(f"e{i:03d}", image, inside.astype(np.uint8))
        return out


def measure(dataset: Path, model: str, size: int, steps: int, warmup: int, batch_size: int, kind: str) -> dict:
    import torch

    from sonosynth.diffusion.config import TrainConfig
    from sonosynth.diffusion.train import train
    from sonosynth.models.configs import ModelConfig
    from sonosynth.models.denoiser import build_model

    stamps: dict[int, float] = {}
    cpu_stamps: dict[int, float] = {}
    config = TrainConfig(
        dataset=str(dataset), model=ModelConfig(size=model, kind=kind), size=size, batch_size=batch_size,
        max_steps=warmup + steps + 1, checkpoint_every=10**9, sample_every=10**9, num_samples=1, sample_steps=1,
    )
    with tempfile.TemporaryDirectory() as run:
        def stamp(step: int, loss: float) -> None:
            stamps[step] = time.perf_counter()
            cpu_stamps[step] = time.process_time()

        train(config, Path(run) / "run", progress=False, on_step=stamp)
    seconds = stamps[warmup + steps] - stamps[warmup]
    cpu_seconds = cpu_stamps[warmup + steps] - cpu_stamps[warmup]
    params = sum(p.numel() for p in build_model(ModelConfig(size=model, kind=kind)).parameters())
    return {
        "model": model, "kind": kind, "px": size, "batch": batch_size, "params": params,
        "steps_per_s": steps / seconds, "images_per_s": steps * batch_size / seconds,
        "cpu_s_per_step": cpu_seconds / steps, "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "base"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--kind", default="spade", choices=["spade", "concat", "joint"])
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=8, help="phantom pairs in the benchmark dataset")
    args = parser.parse_args()

    rows = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp) / "data", args.pairs, max(args.sizes))
        for model in args.models:
            for size in args.sizes:
                row = measure(dataset, model, size, args.steps, args.warmup, args.batch_size, args.kind)
                rows.append(row)
                print(f"{model:>5} {size:>4} px: {row['steps_per_s']:.3f} steps/s", flush=True)

    print()
    print(f"load average before: {load[0]:.1f}, after: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")
    print("| model | kind | px | batch | params | steps/s | images/s | s/step | CPU s/step | torch threads |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['kind']} | {r['px']} | {r['batch']} | {r['params'] / 1e6:.2f} M | "
              f"{r['steps_per_s']:.3f} | {r['images_per_s']:.2f} | {1 / r['steps_per_s']:.2f} | "
              f"{r['cpu_s_per_step']:.2f} | {r['threads']} |")


if __name__ == "__main__":
    main()
