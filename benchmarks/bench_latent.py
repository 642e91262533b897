"""Sampling at 256 px: latent diffusion (the default 4x autoencoder) against pixel space, side by side.

Untrained weights (speed only). Both use the `small` spade denoiser, DPM++ with classifier-free
guidance; the latent model denoises 64 x 64 latents and decodes them once at the end (included).
Each model is timed on `--timed-steps` denoising steps and one decode; images/s are for a full
`--steps`-step run of `--batch` images. Issue 15's target: at least 10x the pixel model's images/s.

    .venv/bin/python benchmarks/bench_latent.py
    .venv/bin/python benchmarks/bench_latent.py --px 256 --batch 4 --timed-steps 2
"""

from __future__ import annotations

import argparse
import time

import torch

from sonosynth.autoencoder.config import AutoencoderConfig
from sonosynth.autoencoder.model import build_autoencoder, latent_factor
from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
from sonosynth.diffusion.schedulers import make_scheduler
from sonosynth.models import ModelConfig, build_model


def seconds(pipe: MaskToUltrasoundPipeline, px: int, batch: int, steps: int) -> float:
    labels = torch.zeros(batch, px, px, dtype=torch.long)
    labels[:, px // 4: 3 * px // 4, px // 4: 3 * px // 4] = 1
    kwargs = {"guidance_scale": 1.5, "generator": torch.Generator().manual_seed(0), "output_type": "pt"}
    pipe(labels, num_inference_steps=1, **kwargs)  # warm-up
    start = time.perf_counter()
    pipe(labels, num_inference_steps=steps, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--timed-steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vae = build_autoencoder(AutoencoderConfig(size=args.px)).eval()
    factor = latent_factor(vae)
    pixel = build_model(ModelConfig(size="small")).eval()
    latent = build_model(ModelConfig(size="small", latent_channels=vae.config.latent_channels,
                                     latent_factor=factor)).eval()
    scheduler = make_scheduler("dpm++", "v_prediction")
    rows = []
    for name, unet, autoencoder in (("pixel", pixel, None), (f"latent ({factor}x)", latent, vae)):
        pipe = MaskToUltrasoundPipeline(unet=unet, scheduler=scheduler, vae=autoencoder)
        pipe.set_progress_bar_config(disable=True)
        # Time t steps (t + decode) and 1 step (1 + decode): the difference is the cost of t - 1 steps.
        with torch.no_grad():
            many, one = seconds(pipe, args.px, args.batch, args.timed_steps), seconds(pipe, args.px, args.batch, 1)
        per_step = (many - one) / max(1, args.timed_steps - 1)
        decode = max(0.0, one - per_step)
        per_image = (per_step * args.steps + decode) / args.batch
        rows.append((name, per_step, decode, per_image))
    print(f"| {args.px} px, batch {args.batch}, {args.steps} steps, {args.threads} thread(s) | s/step | "
          f"decode s | s/image | images/s | vs pixel |")
    print("|---|---|---|---|---|---|")
    for name, per_step, decode, per_image in rows:
        print(f"| {name} | {per_step:.3f} | {decode:.3f} | {per_image:.2f} | {1 / per_image:.3f} | "
              f"{rows[0][3] / per_image:.1f}x |")


if __name__ == "__main__":
    main()
