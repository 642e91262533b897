"""Train a generator from layered settings: the one API function `sonosynth train` calls.

Settings come from, in increasing priority: the defaults, the run's saved config.yaml (with `resume`), a YAML
file, and the options given. With a Stable Diffusion `base` (in the options, the file or the saved run) the run
fine-tunes it (`stable_diffusion/`); otherwise it trains a denoiser from scratch (`diffusion/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sonosynth.diffusion.config import TrainConfig, with_model_size
from sonosynth.errors import SonosynthError
from sonosynth.settings import read_yaml_mapping
from sonosynth.training.loop import TrainResult
from sonosynth.training.run import RunFolder

PRETRAINED_KINDS = ("controlnet", "lora")  # need a base; joint works both ways
# Options that only a denoiser trained from scratch has (a Stable Diffusion base is the network itself).
DENOISER_ONLY = {"model_size": "--net-size", "autoencoder": "--autoencoder", "patch_size": "--patch-size",
                 "class_attributes": "--class-attribute", "init": "--init", "log_with": "--log-with",
                 "unannotated": "--unannotated"}
STABLE_DIFFUSION_ONLY = {"lora_rank": "--lora-rank", "prompt_template": "--prompt-template"}


def train_generator(dataset: str | Path, out: str | Path, options: dict[str, Any],
                    config_file: str | Path | None = None, resume: bool = False, device: str = "auto") -> TrainResult:
    """Train (or resume) into `out`. `options` are TrainConfig / StableDiffusionConfig fields given by the user
    (None: not given), plus `model_size` and `kind`, which a denoiser applies to its `model` section."""
    out = Path(out)
    given = {k: v for k, v in options.items() if v is not None}
    saved = read_yaml_mapping(RunFolder(out).config_yaml) if resume and RunFolder(out).config_yaml.is_file() else {}
    from_file = read_yaml_mapping(config_file) if config_file is not None else {}
    if "base" in given or given.get("kind") in PRETRAINED_KINDS or "base" in saved or "base" in from_file:
        return _train_stable_diffusion(dataset, out, given, saved, from_file, resume, device)
    wrong = [flag for name, flag in STABLE_DIFFUSION_ONLY.items() if name in given]
    if wrong:
        raise SonosynthError(f"{', '.join(wrong)}: fine-tune a Stable Diffusion folder: pass --base SD_DIR")
    from sonosynth.diffusion.train import train

    config = TrainConfig.from_yaml(RunFolder(out).config_yaml) if saved else TrainConfig()
    if config_file is not None:
        # Sections replace the defaults' whole: a partial `model:` (e.g. just `size: tiny`) is completed
        # from that size's preset, not mixed with another preset's widths.
        config = TrainConfig.from_dict({**config.to_dict(), **TrainConfig.current_names(from_file, str(config_file))},
                                       origin=str(config_file))
    fields = {k: v for k, v in given.items() if k not in ("model_size", "kind")}
    config = TrainConfig.from_dict({**config.to_dict(), "dataset": str(dataset), **fields}, origin="command line")
    if "model_size" in given or "kind" in given:
        config.model = with_model_size(config.model, given.get("model_size"), given.get("kind"))
    return train(config, out, resume=resume, device=device)


def _train_stable_diffusion(dataset: str | Path, out: Path, given: dict[str, Any], saved: dict[str, Any],
                            from_file: dict[str, Any], resume: bool, device: str) -> TrainResult:
    from sonosynth.stable_diffusion.config import StableDiffusionConfig
    from sonosynth.stable_diffusion.train import train_stable_diffusion

    if "base" not in given and "base" not in saved and "base" not in from_file:
        raise SonosynthError(f"--kind {given['kind']} fine-tunes a Stable Diffusion folder: pass --base SD_DIR")
    wrong = [flag for name, flag in DENOISER_ONLY.items() if name in given]
    if wrong:
        raise SonosynthError(f"{', '.join(wrong)}: not for Stable Diffusion runs (--base); the base is the "
                             "network, and --prompt-template names the attributes it is conditioned on")
    current = StableDiffusionConfig.current_names
    settings = {**current(saved, str(RunFolder(out).config_yaml)), **current(from_file, "config file"),
                "dataset": str(dataset), **given}
    if settings.get("kind") in ("spade", "concat"):
        raise SonosynthError(f"--kind {settings['kind']} trains a denoiser from scratch; with --base use controlnet, "
                             "lora or joint")
    config = StableDiffusionConfig.from_dict(settings, origin="command line")
    return train_stable_diffusion(config, out, resume=resume, device=device)
