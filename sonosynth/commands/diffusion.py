"""`sonosynth sample`: a synthetic dataset from a trained model and a dataset's masks as they are.

The same writer as `sonosynth generate --mask-source train` (same manifest for the same masks and seed);
kept as its own command for a joint model without a source and for `--n` defaulting to one pair per mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sonosynth.commands import options as opt


def sample(
    run: Path = typer.Argument(..., help="Run folder from `sonosynth train` (or a saved model folder)."),
    source: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--source", help="Dataset whose masks to generate from (none: a joint model draws its own)."),
    masks: Optional[Path] = typer.Option(None, "--masks", hidden=True, help="Old spelling of --source."),  # noqa: UP045
    out: Path = typer.Option(..., "--out", help="Output dataset folder."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of pairs (default: one per mask)."),  # noqa: UP045
    split: str = opt.SPLIT,
    steps: int = opt.SAMPLE_STEPS,
    scheduler: Optional[str] = opt.SCHEDULER,  # noqa: UP045
    guidance: float | None = opt.GUIDANCE,
    seed: int = opt.SEED,
    batch_size: int = opt.BATCH_SIZE,
    output_size: str = opt.OUTPUT_SIZE,
    device: str = opt.DEVICE,
    overwrite: bool = opt.OVERWRITE,
) -> None:
    """Generate images that obey the masks of a dataset (or image + mask pairs from a joint model)."""
    from sonosynth.synthesis.generate import GenerateConfig, generate_dataset

    config = GenerateConfig(mask_source="train", n=n, steps=steps, guidance_scale=guidance, scheduler=scheduler,
                            seed=seed, batch_size=batch_size, split=split, output_size=output_size,
                            device=device).checked()
    path = generate_dataset(run, source or masks, out, config, overwrite=overwrite, command="sonosynth sample")
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
