"""Speed and memory of Stable Diffusion runs: ControlNet (+LoRA) training steps and sampling, random weights.

No pretrained weights exist on our machines, so this measures the architecture, not image quality: a
random-weight base of the chosen preset (`sd15`: Stable Diffusion 1.5's configs; `tiny`: the tests') is
written to a temporary folder, a ControlNet is trained on phantom breast scans through
`sonosynth.stable_diffusion.train` (the code path of `sonosynth train --base`), and the run samples
images through `PromptedMaskPipeline` (the code path of `sonosynth generate`). Prints a table.

    python benchmarks/bench_stable_diffusion.py --preset sd15 --size 512 --device cuda
    python benchmarks/bench_stable_diffusion.py --preset tiny --size 64 --device cpu     # a quick check
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd15", choices=["tiny", "sd15"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="training steps (the first two are not timed)")
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--lora-rank", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mixed-precision", default="auto")
    args = parser.parse_args()

    import torch

    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.phantom.dataset import write_phantom_dataset
    from sonosynth.stable_diffusion.config import StableDiffusionConfig
    from sonosynth.stable_diffusion.random_base import write_random_base
    from sonosynth.stable_diffusion.train import train_stable_diffusion

    cuda = torch.cuda.is_available() and args.device != "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        base = write_random_base(tmp / "base", args.preset)
        rows.append(("write random base", f"{time.perf_counter() - started:.1f} s", ""))
        data = write_phantom_dataset(tmp / "phantom", "breast", n=8, size=f"{args.size}x{args.size}", seed=0)
        stamps: list[float] = []

        def on_step(step: int, loss: float) -> None:
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        config = StableDiffusionConfig(dataset=str(data), base=str(base), kind="controlnet", size=args.size,
                                       batch_size=args.batch_size, max_steps=args.steps, lora_rank=args.lora_rank,
                                       checkpoint_every=10**6, sample_every=10**6, sample_steps=2, num_samples=1,
                                       mixed_precision=args.mixed_precision)
        train_stable_diffusion(config, tmp / "run", on_step=on_step, progress=False, device=args.device)
        timed = stamps[2:] if len(stamps) > 3 else stamps
        per_step = (timed[-1] - timed[0]) / max(1, len(timed) - 1)
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "n/a (CPU)"
        lora = f" + LoRA r{args.lora_rank}" if args.lora_rank else ""
        rows.append((f"ControlNet{lora} training step, batch {args.batch_size}, {args.size} px", f"{per_step:.2f} s",
                     memory))

        pipe = MaskToUltrasoundPipeline.from_pretrained(tmp / "run")
        device = torch.device("cuda" if cuda else "cpu")
        if cuda and args.mixed_precision != "no":
            pipe = pipe.to(dtype=torch.float16)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        labels = torch.zeros(1, args.size, args.size, dtype=torch.long)
        labels[:, args.size // 3 : args.size // 2, args.size // 3 : args.size // 2] = 1
        for attempt in range(2):  # the first call warms up kernels
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            pipe(labels=labels, num_inference_steps=args.sample_steps, guidance_scale=4.0,
                 generator=[torch.Generator().manual_seed(attempt)])
            if cuda:
                torch.cuda.synchronize()
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "n/a (CPU)"
        rows.append((f"sample one {args.size} px image, {args.sample_steps} DPM++ steps, guided",
                     f"{time.perf_counter() - started:.2f} s", memory))

    where = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"\npreset {args.preset} on {where}, torch {torch.__version__}\n")
    print("| what | time | peak GPU memory |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
