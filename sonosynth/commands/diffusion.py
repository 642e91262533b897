"""`sonosynth sample`: generate a synthetic dataset from a trained model and a dataset's masks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def sample(
    run: Path = typer.Argument(..., help="Run folder from `sonosynth train` (or a saved model folder)."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Dataset whose masks to generate from."),  # noqa: UP045
    out: Path = typer.Option(..., "--out", help="Output dataset folder."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of pairs (default: one per mask; masks repeat)."),  # noqa: UP045
    split: str = typer.Option("train", "--split", help="Masks from this split: train, val, test or all."),
    steps: int = typer.Option(25, "--steps", help="Denoising steps."),
    scheduler: str = typer.Option("dpm++", "--scheduler", help="Sampler: dpm++, dpm++sde, unipc, ddim or ddpm."),
    guidance: float = typer.Option(1.5, "--guidance", help="Classifier-free guidance scale (1.0: none)."),
    seed: int = typer.Option(0, "--seed", help="Image i uses seed + i."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass."),
    output_size: str = typer.Option("source", "--output-size", help="source, cropped (model scale) or square."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Generate images that obey the masks of DATASET (or image + mask pairs from a joint model)."""
    from sonosynth.diffusion.sample import SampleConfig, sample_dataset

    config = SampleConfig(
        run=str(run),
        masks=None if masks is None else str(masks),
        split=split,
        n=n,
        scheduler=scheduler,
        steps=steps,
        guidance=guidance,
        seed=seed,
        batch_size=batch_size,
        output_size=output_size,
        device=device,
    )
    path = sample_dataset(config, out, overwrite=overwrite)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
