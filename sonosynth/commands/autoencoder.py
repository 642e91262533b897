"""`sonosynth autoencoder train DATASET... --out AE`: the ultrasound autoencoder for latent diffusion.

Settings as in `sonosynth train`: the defaults, the run's saved config.yaml (with --resume), `--config FILE`,
then the flags given. Any number of datasets: a label-free autoencoder can learn from every ultrasound
image there is (masks are not used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sonosynth.commands import options as opt

autoencoder_app = typer.Typer(help="Train an ultrasound autoencoder (for latent diffusion at 256 px).",
                              no_args_is_help=True)


@autoencoder_app.command("train", no_args_is_help=True)
def train_command(
    datasets: list[Path] = typer.Argument(..., help="Dataset folders (their images; several allowed)."),
    out: Path = typer.Option(..., "--out", help="Run folder: config.yaml, checkpoints/, samples/, model/."),
    size: int | None = typer.Option(None, "--size", help="Image side in pixels (letterboxed squares) (default 256)."),
    patch_size: int | None = typer.Option(None, "--patch-size", help="Train on random patches of this side "
                                                                     "(default 64; 0: whole images)."),
    config_file: Path | None = typer.Option(None, "--config", help="YAML file with AutoencoderConfig fields."),
    max_steps: int | None = opt.max_steps(None, "Optimizer steps in total (default 2000)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size (default 8)."),
    learning_rate: float | None = opt.learning_rate(None, "Learning rate (default 1e-4)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of everything random (default 0)."),
    split: str | None = typer.Option(None, "--split", help="Images to train on: auto (each dataset's train split; a "
                                     "dataset without splits is refused; the default), train, val, test or all."),
    adversarial_start: int | None = typer.Option(None, "--adversarial-start",
                                                 help="Step at which the patch-GAN term starts (default 500)."),
    init: Path | None = typer.Option(None, "--init", help="Start from an earlier autoencoder run's weights."),
    decoder_only: bool = typer.Option(False, "--decoder-only", help="With --init: train the decoder only, so the "
                                      "latent space (and denoisers trained on it) stays."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest complete checkpoint in AE."),
    mixed_precision: str | None = opt.MIXED_PRECISION,
    device: str = opt.DEVICE,
) -> None:
    """Train a KL autoencoder (loads with diffusers' AutoencoderKL.from_pretrained(AE/model))."""
    from sonosynth.autoencoder.config import AutoencoderConfig
    from sonosynth.autoencoder.train import train_autoencoder
    from sonosynth.settings import read_yaml_mapping
    from sonosynth.training.run import RunFolder

    base = AutoencoderConfig()
    if resume and RunFolder(out).config_yaml.is_file():
        base = AutoencoderConfig.from_yaml(RunFolder(out).config_yaml)
    if config_file is not None:
        from_file = AutoencoderConfig.current_names(read_yaml_mapping(config_file), str(config_file))
        base = AutoencoderConfig.from_dict({**base.to_dict(), **from_file}, origin=str(config_file))
    overrides: dict[str, Any] = {
        "init": None if init is None else str(init),
        "datasets": [str(d) for d in datasets],
        "size": size,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "split": split,
        "adversarial_start": adversarial_start,
        "mixed_precision": mixed_precision,
    }
    data = {**base.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
    if patch_size is not None:
        data["patch_size"] = patch_size or None
    if decoder_only:
        data["decoder_only"] = True
    config = AutoencoderConfig.from_dict(data, origin="command line")
    result = train_autoencoder(config, out, resume=resume, device=device)
    typer.echo(f"trained to step {result.step} in {result.seconds:.0f} s; model in {result.model_dir}")


@autoencoder_app.command("evaluate", no_args_is_help=True)
def evaluate_command(
    autoencoder: Path = typer.Argument(..., help="Autoencoder run (or its model/ folder)."),
    dataset: Path = typer.Argument(..., help="Dataset whose images to reconstruct."),
    split: str = typer.Option("test", "--split", help="Which images: test (default), val, train, auto or all."),
    segmenter: Path | None = typer.Option(None, "--segmenter", help="SEGRUN: its Dice on reconstructions."),
    out: Path | None = typer.Option(None, "--out", help="Also write the measures to this JSON file."),
    device: str = opt.DEVICE,
) -> None:
    """PSNR, SSIM, speckle SNR, intensity histogram (and a segmenter's Dice) of reconstructed images."""
    from sonosynth.autoencoder.evaluate import evaluate_autoencoder
    from sonosynth.files import guard_output, write_json_atomic

    if out is not None:
        guard_output(out, [autoencoder, dataset, segmenter], file=True)
    result = evaluate_autoencoder(autoencoder, dataset, split=split, segmenter=segmenter, device=device)
    for key, value in result.items():
        typer.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if out is not None:
        write_json_atomic(out, result)


def register(app: typer.Typer) -> None:
    app.add_typer(autoencoder_app, name="autoencoder")
