"""`sonosynth train DATASET --out RUN`: train a mask-conditioned diffusion model.

Settings come from, in increasing priority: the defaults, the run's saved config.yaml (with
--resume), `--config FILE`, and the flags given on the command line. The same command runs on
CPU, one GPU or several processes (`accelerate launch -m sonosynth.cli train ...` or torchrun).

With `--base SD_DIR` (a local Stable Diffusion folder) the run fine-tunes it instead of training a
denoiser from scratch: `--kind controlnet` (a ControlNet on the label maps, optionally with LoRA),
`lora` (prompts only) or `joint` (image | mask side by side); see `sonosynth.stable_diffusion`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from sonosynth.commands import options as opt
from sonosynth.models.configs import SIZE_PRESETS

ModelSize = Enum("ModelSize", {name: name for name in SIZE_PRESETS}, type=str)  # the presets, one source


class ModelKind(str, Enum):
    spade = "spade"
    concat = "concat"
    joint = "joint"
    controlnet = "controlnet"
    lora = "lora"


def train_command(
    dataset: Path = typer.Argument(..., help="Dataset folder (dataset.json + manifest.csv)."),
    out: Path = typer.Option(..., "--out", help="Run folder: config.yaml, checkpoints/, samples/, model/."),
    net_size: ModelSize | None = opt.net_size(None, "Denoiser size preset (default small; docs/models.md)."),
    model: ModelSize | None = opt.old_spelling("--model", "--net-size"),
    kind: ModelKind | None = typer.Option(
        None, "--kind", help="Conditioning: spade, concat or joint (default spade); with --base: controlnet "
        "(default), lora or joint."
    ),
    base: Path | None = typer.Option(
        None, "--base", help="Fine-tune this local Stable Diffusion folder (diffusers format) instead."
    ),
    lora_rank: int | None = typer.Option(
        None, "--lora-rank", help="With --base: LoRA rank on the UNet (controlnet: none unless given; else 4)."
    ),
    prompt_template: str | None = typer.Option(
        None, "--prompt-template", help="With --base: prompt from attributes, e.g. 'ultrasound image of the "
        "{organ}, {pathology}' (the default)."
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
        None, "--class-attribute", metavar="NAME", help="Categorical attribute to condition on (repeatable)."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Pairs to train on: auto (the train split; a dataset without splits is refused; the "
        "default), train, val, test or all (every pair)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of everything random (default 0)."),
    mixed_precision: str | None = opt.MIXED_PRECISION,
    log_with: str | None = typer.Option(None, "--log-with", help="'tensorboard' to log into RUN/."),
    init: Path | None = typer.Option(None, "--init", help="Start from this earlier run's weights (fine-tune it)."),
    unannotated: Path | None = typer.Option(
        None, "--unannotated", help="Scans without masks (a folder of images, or a dataset folder whose masks are "
        "not read): they train the mask-free branch, so appearance is learned from them too (docs/training.md)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest complete checkpoint in RUN."),
    device: str = opt.DEVICE,
) -> None:
    """Train a mask-to-ultrasound diffusion model (loads with MaskToUltrasoundPipeline.from_pretrained(RUN))."""
    from sonosynth.generator_training import train_generator

    options = {
        "base": base, "kind": None if kind is None else kind.value, "lora_rank": lora_rank,
        "prompt_template": prompt_template, "init": init, "autoencoder": autoencoder, "size": size,
        "max_steps": max_steps, "batch_size": batch_size, "learning_rate": opt.either(learning_rate, lr),
        "patch_size": patch_size, "class_attributes": class_attribute or None, "split": split, "seed": seed,
        "mixed_precision": mixed_precision, "log_with": log_with, "unannotated": unannotated,
        "model_size": None if opt.either(net_size, model) is None else ModelSize(opt.either(net_size, model)).value,
    }
    options = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    result = train_generator(dataset, out, options, config_file, resume=resume, device=device)
    typer.echo(f"trained to step {result.step} in {result.seconds:.0f} s; model in {result.model_dir or out}")


def register(app: typer.Typer) -> None:
    app.command("train", no_args_is_help=True)(train_command)
