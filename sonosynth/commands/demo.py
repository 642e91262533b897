"""`sonosynth demo`: the whole pipeline on built-in phantom data."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from sonosynth.commands import options as opt


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for everything the demo makes."),
    fast: bool = typer.Option(False, "--fast", help="A ~3-minute smoke version with tiny models."),
    latent: bool = typer.Option(False, "--latent", help="Latent diffusion: an autoencoder on the phantom images, the "
                                "denoiser on its latents, images at twice the side."),
    device: str = opt.DEVICE,
    seed: int = opt.SEED,
) -> None:
    """Simulate fetal-head data, train a diffusion model, generate pairs, prove they help."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA
    from rich.console import Console
    from rich.markdown import Markdown

    from sonosynth.demo import DemoConfig, results_table, run_demo

    console = Console()
    config = (DemoConfig.fast if fast else DemoConfig.full)(device=device, seed=seed).checked()
    if latent:
        config = config.latent()
    report = run_demo(out, config, log=console.print)
    console.print(Markdown(results_table(report)))
    console.print("Stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in config.timings.items()))
    console.print(f"Report: {report / 'report.html'}")
    if latent:
        console.print(f"Autoencoder: {out / 'autoencoder'} (input | reconstruction grids in its samples/)")
    console.print(f"Sample grids: {out / 'model-run' / 'samples'}")
    console.print(f"Model: {out / 'model-run' / 'model'} (MaskToUltrasoundPipeline.from_pretrained)")
    console.print(f"Synthetic dataset: {out / 'synthetic'}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
