"""`sonosynth train DATASET --out RUN`: train a mask-conditioned diffusion model.

Settings come from, in increasing priority: the defaults, the run's saved config.yaml (with
--resume), `--config FILE`, and the flags given on the command line. The same command runs on
CPU, one GPU or several processes (`accelerate launch -m sonosynth.cli train ...` or torchrun).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer

from sonosynth.commands import options as opt


class ModelSize(str, Enum):
    tiny = "tiny"
    small = "small"
    base = "base"


class ModelKind(str, Enum):
    spade = "spade"
    concat = "concat"
    joint = "joint"


def train_command(
    dataset: Path = typer.Argument(..., help="Dataset folder (dataset.json + manifest.csv)."),
    out: Path = typer.Option(..., "--out", help="Run folder: config.yaml, checkpoints/, samples/, model/."),
    net_size: ModelSize | None = opt.net_size(None, "Denoiser size preset: tiny, small or base (default small)."),
    model: ModelSize | None = opt.old_spelling("--model", "--net-size"),
    kind: ModelKind | None = typer.Option(
        None, "--kind", help="Conditioning: spade, concat or joint (default spade)."
    ),
    size: int | None = typer.Option(None, "--size", help="Image side in pixels (letterboxed squares) (default 64)."),
    config_file: Path | None = typer.Option(None, "--config", help="YAML file with TrainConfig fields."),
    autoencoder: Path | None = typer.Option(
        None, "--autoencoder", help="Latent diffusion on this autoencoder (`sonosynth autoencoder train`)."
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimizer steps in total (default 2000)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Per-process batch size (default 8)."),
    learning_rate: float | None = opt.learning_rate(None, "Peak learning rate (default 5e-4)."),
    lr: float | None = opt.old_spelling("--lr", "--learning-rate"),
    patch_size: int | None = typer.Option(None, "--patch-size", help="Train on random patches of this side."),
    class_attribute: list[str] | None = typer.Option(
        None, "--class-attribute", help="Categorical attribute to condition on (repeatable)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of everything random (default 0)."),
    mixed_precision: str | None = typer.Option(None, "--mixed-precision", help="auto, no, fp16 or bf16."),
    log_with: str | None = typer.Option(None, "--log-with", help="'tensorboard' to log into RUN/."),
    init: Path | None = typer.Option(None, "--init", help="Start from this earlier run's weights (fine-tune it)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest complete checkpoint in RUN."),
    device: str = opt.DEVICE,
) -> None:
    """Train a mask-to-ultrasound diffusion model (loads with MaskToUltrasoundPipeline.from_pretrained(RUN))."""
    from sonosynth.diffusion.config import TrainConfig, with_model_size
    from sonosynth.diffusion.run import RunFolder
    from sonosynth.diffusion.train import train
    from sonosynth.settings import read_yaml_mapping

    base = TrainConfig()
    if resume and RunFolder(out).config_yaml.is_file():
        base = TrainConfig.from_yaml(RunFolder(out).config_yaml)
    if config_file is not None:
        # Sections replace the defaults' whole: a partial `model:` (e.g. just `size: tiny`) is completed
        # from that size's preset, not mixed with another preset's widths.
        base = TrainConfig.from_dict({**base.to_dict(), **read_yaml_mapping(config_file)}, origin=str(config_file))
    overrides: dict[str, Any] = {
        "init": None if init is None else str(init),
        "dataset": str(dataset),
        "autoencoder": None if autoencoder is None else str(autoencoder),
        "image_size": size,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "lr": opt.either(learning_rate, lr),
        "patch_size": patch_size,
        "class_attributes": class_attribute or None,
        "seed": seed,
        "mixed_precision": mixed_precision,
        "log_with": log_with,
    }
    data = {**base.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
    config = TrainConfig.from_dict(data, origin="command line")
    preset = opt.either(net_size, model)
    if preset is not None or kind is not None:
        config.model = with_model_size(
            config.model, None if preset is None else ModelSize(preset).value, None if kind is None else kind.value
        )
    result = train(config, out, resume=resume, device=device)
    typer.echo(f"trained to step {result.step} in {result.seconds:.0f} s; model in {result.model_dir or out}")


def register(app: typer.Typer) -> None:
    app.command("train", no_args_is_help=True)(train_command)
