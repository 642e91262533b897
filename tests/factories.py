"""Builders for tests, in one place: tiny models and runs, toy datasets and masks, files in published layouts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from filelock import FileLock
from PIL import Image

from sonosynth.data.format import DatasetInfo, DatasetWriter
from sonosynth.data.imageio import write_png
from sonosynth.diffusion.config import TrainConfig
from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
from sonosynth.diffusion.schedulers import make_scheduler
from sonosynth.models.configs import ModelConfig
from sonosynth.models.denoiser import build_model
from sonosynth.segmentation.common import PairTensors


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Untrained MONAI U-Nets end in a zero conv; random weights make outputs depend on the inputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


def tiny_pipeline(kind: str = "spade", num_labels: int = 2, class_values: dict[str, list[str]] | None = None,
                  size: int = 16, scheduler: str = "dpm++", training_step: int | None = 12,
                  random_weights: bool = True) -> MaskToUltrasoundPipeline:
    """A tiny pipeline as training saves it: v-prediction on the DDPM schedule, class value lists stored."""
    class_values = class_values or {}
    torch.manual_seed(0)
    unet = build_model(ModelConfig(kind=kind, size="tiny", num_labels=num_labels,
                                   class_cardinalities=[len(v) for v in class_values.values()]))
    if random_weights:
        randomize(unet)
    pipe = MaskToUltrasoundPipeline(
        unet=unet, scheduler=make_scheduler(scheduler, prediction_type="v_prediction"), sample_size=size,
        training_step=training_step, class_values=[[k, list(v)] for k, v in class_values.items()] or None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_run(out: Path, num_labels: int = 2, class_values: dict[str, list[str]] | None = None,
                  size: int = 32, kind: str = "spade", scheduler: str = "ddim", training_step: int | None = None,
                  random_weights: bool = False) -> Path:
    """A run folder as `sonosynth train` leaves it (config.yaml, the pipeline in model/), untrained."""
    pipe = tiny_pipeline(kind, num_labels, class_values, size, scheduler, training_step, random_weights)
    pipe.save_pretrained(str(out / "model"))
    (out / "config.yaml").write_text(yaml.safe_dump({"size": size,
                                                     "class_attributes": list(class_values or {})}))
    return out


# ---- data --------------------------------------------------------------------------------------------


def ellipse_pair(rng: np.random.Generator, height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A speckled image with a bright ellipse and its filled-ellipse mask (label 1)."""
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.4, 0.6) * height, rng.uniform(0.4, 0.6) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    image = rng.rayleigh(40.0, size=(height, width)) + 80.0 * inside
    return np.clip(image, 1, 255).astype(np.uint8), inside.astype(np.uint8)


def letterboxed_pairs(n: int, seed: int, size: int = 32) -> PairTensors:
    """n toy ellipse pairs as a segmenter holds them: letterboxed to size x size tensors."""
    from sonosynth.data.transforms import letterbox_mask
    from sonosynth.segmentation.predict import image_to_model

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        image, mask = ellipse_pair(rng, 48, 64)
        images.append(image_to_model(image, size))
        labels.append(letterbox_mask(mask, size))
    return PairTensors(torch.stack(images), torch.stack(labels))


def write_toy_dataset(out: Path, n: int = 6, seed: int = 0, height: int = 48, width: int = 64, prefix: str = "toy"
                      ) -> Path:
    """A tiny one-label dataset for tests that need any valid dataset folder (ids PREFIX_000, ...)."""
    rng = np.random.default_rng(seed)
    info = DatasetInfo(name="toy", labels={"0": "background", "1": "head"}, attributes={"view": ["a", "b"]})
    with DatasetWriter(out, info) as writer:
        for i in range(n):
            image, mask = ellipse_pair(rng, height, width)
            writer.add(f"{prefix}_{i:03d}", image, mask, subject=f"s{i // 2}", spacing_mm=0.2, view="ab"[i % 2])
    return out


def cardiac_mask(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A cardiac-like label map: LV cavity (1) inside a myocardium ring (2), atrium (3) above."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.45, 0.55) * size, rng.uniform(0.45, 0.55) * size
    a, b, wall = rng.uniform(0.16, 0.2) * size, rng.uniform(0.1, 0.13) * size, rng.uniform(0.05, 0.07) * size
    mask = np.zeros((size, size), np.uint8)
    mask[((yy - cy) / (a + wall)) ** 2 + ((xx - cx) / (b + wall)) ** 2 <= 1] = 2
    mask[((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1] = 1
    mask[((yy - cy + a + wall + 0.06 * size) / (0.07 * size)) ** 2 + ((xx - cx) / (0.1 * size)) ** 2 <= 1] = 3
    return mask


def head_mask(rng: np.random.Generator, height: int = 48, width: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    a, b, theta = rng.uniform(0.2, 0.3) * width, rng.uniform(0.22, 0.3) * height, rng.uniform(0, np.pi)
    u = (xx - width / 2) * np.cos(theta) + (yy - height / 2) * np.sin(theta)
    v = -(xx - width / 2) * np.sin(theta) + (yy - height / 2) * np.cos(theta)
    return ((u / a) ** 2 + (v / b) ** 2 <= 1).astype(np.uint8)


def write_cardiac_dataset(out: Path, n: int = 6, atrium_in_2ch: bool = True) -> Path:
    rng = np.random.default_rng(0)
    info = DatasetInfo(name="cardiac", labels={"0": "background", "1": "lv", "2": "myo", "3": "la"},
                       attributes={"view": ["2CH", "4CH"]})
    with DatasetWriter(out, info) as writer:
        for i in range(n):
            mask = cardiac_mask(rng, 48)
            if i % 2 and not atrium_in_2ch:
                mask[mask == 3] = 0
            image = np.clip(rng.rayleigh(40, mask.shape) + 40 * mask, 1, 255).astype(np.uint8)
            writer.add(f"c{i}", image, mask, subject=f"p{i}", spacing_mm=0.3, view="2CH" if i % 2 else "4CH")
    return out


def oracle_for_constant(model, value: float):
    """The exact v-prediction of a model whose data is one constant image: RePaint with it must paint `value`."""
    alphas = model.pipe.scheduler.alphas_cumprod

    def forward(sample, timestep, condition=None, class_labels=None):
        alpha_bar = alphas[timestep.long()].to(sample.dtype).view(-1, 1, 1, 1)
        x0 = torch.full_like(sample, value)
        epsilon = (sample - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        return alpha_bar.sqrt() * epsilon - (1 - alpha_bar).sqrt() * x0

    return forward


def speckle(rng: np.random.Generator, shape=(40, 56)) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


def box(shape, top, left, size, value=255) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[top : top + size, left : left + size] = value
    return mask


def write_busi(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """benign (2 lesions in 2 mask files, RGB-stored image), malignant, normal (empty mask)."""
    rng = np.random.default_rng(seed)
    images = {}
    for pathology in ("benign", "malignant", "normal"):
        (root / pathology).mkdir(parents=True)
    benign = speckle(rng)
    Image.fromarray(np.stack([benign] * 3, axis=-1)).save(root / "benign" / "benign (1).png")
    Image.fromarray(np.stack([box(benign.shape, 2, 2, 8)] * 3, axis=-1)).save(root / "benign" / "benign (1)_mask.png")
    write_png(root / "benign" / "benign (1)_mask_1.png", box(benign.shape, 20, 30, 6))
    malignant = speckle(rng)
    write_png(root / "malignant" / "malignant (1).png", malignant)
    write_png(root / "malignant" / "malignant (1)_mask.png", box(malignant.shape, 10, 10, 12))
    normal = speckle(rng)
    write_png(root / "normal" / "normal (1).png", normal)
    write_png(root / "normal" / "normal (1)_mask.png", np.zeros(normal.shape, np.uint8))
    images.update({"benign_1": benign, "malignant_1": malignant, "normal_1": normal})
    return images


def imported_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """`make(out)` run once per test session (real imports are slow), shared by xdist workers through a lock."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out = base / name
    with FileLock(str(out) + ".lock"):
        if not out.exists():
            make(out)
    return out


# ---- training runs -----------------------------------------------------------------------------------


def tiny_train_config(dataset: Path, **changes) -> TrainConfig:
    """A run that takes seconds: tiny model, 32 px, batch 2, sampling with 2 steps."""
    settings = dict(dataset=str(dataset), split="all", model=ModelConfig(size="tiny"), size=32, batch_size=2,
                    max_steps=4, warmup_steps=1, checkpoint_every=2, keep_checkpoints=5, sample_every=1000,
                    sample_steps=2, num_samples=1)
    return TrainConfig(**{**settings, **changes})


class Killed(Exception):
    """Raised by `kill_at` to stop a training mid-run, as a crash would."""


def kill_at(step_to_die: int) -> Callable[[int, float], None]:
    """An `on_step` callback that raises `Killed` after optimizer step `step_to_die`."""
    def on_step(step: int, loss: float) -> None:
        if step == step_to_die:
            raise Killed

    return on_step


# ---- a tiny random Stable Diffusion (no weights can be downloaded) --------------------------------------


def write_tiny_stable_diffusion(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A diffusers-format Stable Diffusion folder with random weights (2-level UNet with cross-attention, 2x VAE,
    one-layer CLIP text encoder, character-level tokenizer): SD 1.5's layout, or 2.x's with v_prediction."""
    from sonosynth.stable_diffusion.random_base import write_random_base

    return write_random_base(folder, "tiny", prediction_type, seed)


def tiny_stable_diffusion_config(dataset: Path, base: Path, **changes):
    """A Stable Diffusion run that takes seconds: 32 px, batch 2, 4 steps, sampling with 2 steps."""
    from sonosynth.stable_diffusion.config import StableDiffusionConfig

    settings = dict(dataset=str(dataset), split="all", base=str(base), size=32, batch_size=2, max_steps=4,
                    learning_rate=1e-3, checkpoint_every=2, keep_checkpoints=5, sample_every=1000, sample_steps=2,
                    num_samples=1,
                    prompt_template="ultrasound image of the {organ}, view {view}")
    return StableDiffusionConfig(**{**settings, **changes})


def run_cli(args: list[object], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
            ) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `sonosynth ARGS`, run in-process as the console script runs it."""
    import sys

    from sonosynth.cli import main

    monkeypatch.setattr(sys, "argv", ["sonosynth", *map(str, args)])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as stopped:
        code = int(stopped.code or 0) if not isinstance(stopped.code, str) else 1
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def error_line(code: int, err: str) -> str:
    """The one `error:` line of a refused command (exit 1, no traceback), asserted."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1, err
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]
