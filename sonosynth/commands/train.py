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
from typing import Any

import typer

from sonosynth.commands import options as opt
from sonosynth.errors import SonosynthError
from sonosynth.models.configs import SIZE_PRESETS

ModelSize = Enum("ModelSize", {name: name for name in SIZE_PRESETS}, type=str)  # the presets, one source


class ModelKind(str, Enum):
    spade = "spade"
    concat = "concat"
    joint = "joint"
    controlnet = "controlnet"
    lora = "lora"


PRETRAINED_KINDS = ("controlnet", "lora")  # need --base; joint works both ways


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
        None, "--class-attribute", help="Categorical attribute to condition on (repeatable)."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Pairs to train on: auto (the train split; a dataset without splits is refused; the "
        "default), train, val, test or all (every pair)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of everything random (default 0)."),
    mixed_precision: str | None = opt.MIXED_PRECISION,
    log_with: str | None = typer.Option(None, "--log-with", help="'tensorboard' to log into RUN/."),
    init: Path | None = typer.Option(None, "--init", help="Start from this earlier run's weights (fine-tune it)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest complete checkpoint in RUN."),
    device: str = opt.DEVICE,
) -> None:
    """Train a mask-to-ultrasound diffusion model (loads with MaskToUltrasoundPipeline.from_pretrained(RUN))."""
    from sonosynth.diffusion.config import TrainConfig, with_model_size
    from sonosynth.diffusion.train import train
    from sonosynth.settings import read_yaml_mapping
    from sonosynth.training.run import RunFolder

    saved = read_yaml_mapping(RunFolder(out).config_yaml) if resume and RunFolder(out).config_yaml.is_file() else {}
    from_file = read_yaml_mapping(config_file) if config_file is not None else {}
    if base is not None or (kind is not None and kind.value in PRETRAINED_KINDS) or "base" in saved \
            or "base" in from_file:
        not_here = {"--net-size": opt.either(net_size, model), "--autoencoder": autoencoder,
                    "--patch-size": patch_size, "--class-attribute": class_attribute or None, "--init": init,
                    "--log-with": log_with}
        if base is None and "base" not in saved and "base" not in from_file:
            raise SonosynthError(f"--kind {kind.value} fine-tunes a Stable Diffusion folder: pass --base SD_DIR")
        given = [flag for flag, value in not_here.items() if value is not None]
        if given:
            raise SonosynthError(f"{', '.join(given)}: not for Stable Diffusion runs (--base); the base is the "
                                 "network, and --prompt-template names the attributes it is conditioned on")
        overrides = {"dataset": str(dataset), "base": None if base is None else str(base),
                     "kind": None if kind is None else kind.value, "image_size": size, "max_steps": max_steps,
                     "batch_size": batch_size, "lr": opt.either(learning_rate, lr), "lora_rank": lora_rank,
                     "prompt_template": prompt_template, "split": split, "seed": seed,
                     "mixed_precision": mixed_precision}
        _train_stable_diffusion({**saved, **from_file, **{k: v for k, v in overrides.items() if v is not None}},
                                out, resume, device)
        return
    if lora_rank is not None or prompt_template is not None:
        raise SonosynthError("--lora-rank and --prompt-template fine-tune a Stable Diffusion folder: pass --base "
                             "SD_DIR")
    base = TrainConfig()
    if saved:
        base = TrainConfig.from_yaml(RunFolder(out).config_yaml)
    if config_file is not None:
        # Sections replace the defaults' whole: a partial `model:` (e.g. just `size: tiny`) is completed
        # from that size's preset, not mixed with another preset's widths.
        base = TrainConfig.from_dict({**base.to_dict(), **from_file}, origin=str(config_file))
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
        "split": split,
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


def _train_stable_diffusion(settings: dict[str, Any], out: Path, resume: bool, device: str) -> None:
    from sonosynth.stable_diffusion.config import StableDiffusionConfig
    from sonosynth.stable_diffusion.train import train_stable_diffusion

    if settings.get("kind") in ("spade", "concat"):
        raise SonosynthError(f"--kind {settings['kind']} trains a denoiser from scratch; with --base use controlnet, "
                             "lora or joint")
    config = StableDiffusionConfig.from_dict(settings, origin="command line")
    result = train_stable_diffusion(config, out, resume=resume, device=device)
    typer.echo(f"trained to step {result.step} in {result.seconds:.0f} s; model in {result.model_dir or out}")


def register(app: typer.Typer) -> None:
    app.command("train", no_args_is_help=True)(train_command)
