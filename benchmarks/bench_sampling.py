"""Sampling speed of the size presets at 64, 128 and 256 px (untrained weights: speed only).

Times `--timed-steps` denoising steps of the real pipeline (spade model, DPM-Solver++,
classifier-free guidance on, so each step is one forward pass on a doubled batch) and reports
seconds per step and images/s for a full `--steps`-step sampling run (timed per-step cost times
`--steps`; the solver's own cost is negligible next to the network).

    .venv/bin/python benchmarks/bench_sampling.py                     # all sizes, 64/128/256 px
    .venv/bin/python benchmarks/bench_sampling.py --sizes small --px 64,128 --batch 8
"""

from __future__ import annotations

import argparse
import time

import torch

from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
from sonosynth.diffusion.schedulers import make_scheduler
from sonosynth.models import ModelConfig, build_model


def seconds_per_step(pipe: MaskToUltrasoundPipeline, px: int, batch: int, timed_steps: int, guidance: float) -> float:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (batch, px, px), generator=generator)
    fov = torch.ones(batch, 1, px, px)
    kwargs = {"fov": fov, "guidance_scale": guidance, "generator": generator}
    pipe(labels, num_inference_steps=1, **kwargs)  # warm-up
    start = time.perf_counter()
    pipe(labels, num_inference_steps=timed_steps, **kwargs)
    return (time.perf_counter() - start) / timed_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,small,base")
    parser.add_argument("--px", default="64,128,256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--timed-steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25, help="steps of the sampling run images/s refers to")
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sampling, spade model, dpm++ {args.steps} steps, guidance {args.guidance}, "
                  f"batch {args.batch}, {args.device}, {torch.get_num_threads()} threads")
    for column in ("size", "params", "px", "s/step", f"s/image ({args.steps} steps)", "images/s"):
        table.add_column(column, justify="left" if column == "size" else "right")
    for size in args.sizes.split(","):
        model = build_model(ModelConfig(kind="spade", size=size, num_labels=2)).to(args.device).eval()
        pipe = MaskToUltrasoundPipeline(unet=model, scheduler=make_scheduler("dpm++", "v_prediction"))
        pipe.set_progress_bar_config(disable=True)
        params = sum(p.numel() for p in model.parameters())
        for px in (int(p) for p in args.px.split(",")):
            step = seconds_per_step(pipe, px, args.batch, args.timed_steps, args.guidance)
            per_image = step * args.steps / args.batch
            table.add_row(size, f"{params / 1e6:.2f}M", str(px), f"{step:.3f}", f"{per_image:.2f}",
                          f"{1 / per_image:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
