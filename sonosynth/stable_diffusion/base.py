"""The Stable Diffusion folder a run builds on (`--base SD_DIR`): checked, fingerprinted, loaded.

A base is a diffusers-format folder (SD 1.5 or 2.x layout): model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/. Nothing is downloaded (`local_files_only`) and no pickle is read (safetensors only).
A run stores only what it trained, plus the base's path and the hash of its configs: loading it on another
base (a different architecture or schedule) is refused instead of producing noise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonosynth.errors import SonosynthError

# The files whose content defines what the base computes (weights are checked by loading them).
CONFIG_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
)
# The CLIP tokenizer as SD 1.5/2.x ship it (vocab + merges), or as transformers >= 5 saves it (tokenizer.json).
TOKENIZER_LAYOUTS = (("tokenizer/vocab.json", "tokenizer/merges.txt"), ("tokenizer/tokenizer.json",))


def tokenizer_files(path: Path) -> tuple[str, ...]:
    """The tokenizer files present, in the first complete layout (empty: none is complete)."""
    return next((layout for layout in TOKENIZER_LAYOUTS if all((path / f).is_file() for f in layout)), ())


def check_base(path: str | Path) -> Path:
    """`path` as a complete base folder, or a one-line error naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise SonosynthError(f"{path}: Stable Diffusion folder not found")
    missing = [name for name in CONFIG_FILES if not (path / name).is_file()]
    if not tokenizer_files(path):
        missing.append("tokenizer/vocab.json + merges.txt (or tokenizer.json)")
    missing += [f"{part}/*.safetensors" for part in ("unet", "vae", "text_encoder")
                if (path / part).is_dir() and not any((path / part).glob("*.safetensors"))]
    if missing:
        raise SonosynthError(f"{path}: not a complete diffusers Stable Diffusion folder, missing {', '.join(missing)}")
    return path


def base_fingerprint(path: str | Path) -> str:
    """A hash of the base's configs (architecture, schedule, tokenizer): what a run must be loaded on."""
    path = check_base(path)
    digest = hashlib.sha256()
    for name in CONFIG_FILES + tokenizer_files(path):
        text = (path / name).read_bytes()
        if name.endswith(".json"):  # key order and diffusers' bookkeeping keys do not change the model
            data = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
            text = json.dumps(data, sort_keys=True).encode()
        digest.update(name.encode() + b"\0" + text + b"\0")
    return digest.hexdigest()[:16]


@dataclass
class BaseComponents:
    """The frozen parts of Stable Diffusion, loaded from the base folder."""

    path: Path
    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any  # the training noise schedule (DDPM on the base's betas and prediction type)

    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_base(path: str | Path) -> BaseComponents:
    """Load the base's VAE, text encoder, tokenizer, UNet and noise schedule (on the CPU, float32)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    path = check_base(path)
    transformers_logging.disable_progress_bar()  # a bar per component of a small folder is noise
    kwargs = {"local_files_only": True, "use_safetensors": True}
    try:
        return BaseComponents(
            path=path,
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae", **kwargs),
            text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kwargs),
            tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True),
            unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kwargs),
            scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True),
        )
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SonosynthError(f"{path}: cannot load the Stable Diffusion folder ({first})") from None
