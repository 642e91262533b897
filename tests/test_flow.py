"""Rectified flow (`prediction_type: flow`): the objective, a run that learns and samples in a few steps, and the
samplers that do and do not fit it, each refusal one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from factories import tiny_train_config, write_toy_dataset

from sonosynth.augment import AugmentConfig
from sonosynth.errors import SonosynthError
from sonosynth.models.configs import ModelConfig


def test_the_flow_objective_is_a_straight_line_from_the_image_to_the_noise() -> None:
    from sonosynth.diffusion.schedulers import make_scheduler
    from sonosynth.training.denoising import noised

    x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    noisy, timesteps, target = noised(make_scheduler("euler", "flow", 1000), x0, torch.Generator().manual_seed(0),
                                      "flow")
    generator = torch.Generator().manual_seed(0)  # noise first, then the times: the order exact resume relies on
    noise = torch.randn(x0.shape, generator=generator)
    s = torch.rand((4,), generator=generator)
    assert torch.allclose(timesteps, s * 1000)
    assert torch.allclose(noisy, (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise)
    assert torch.allclose(target, noise - x0)
    assert torch.allclose(noisy - s.view(-1, 1, 1, 1) * target, x0, atol=1e-6)  # one exact step back to the image


def test_a_flow_run_learns_two_pairs_and_samples_them_in_four_euler_steps(tmp_path: Path) -> None:
    from sonosynth.data.format import Dataset
    from sonosynth.data.torch_dataset import LetterboxedPairs
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.diffusion.samples import sample_batch
    from sonosynth.diffusion.train import train
    from sonosynth.models.denoiser import build_model

    dataset = write_toy_dataset(tmp_path / "two", n=2, seed=3)
    config = tiny_train_config(
        dataset, model=ModelConfig(size="tiny", kind="concat"), batch_size=4, max_steps=80, learning_rate=2e-3,
        warmup_steps=5, lr_schedule="constant", checkpoint_every=1000, ema_decay=0.9, sample_steps=4,
        guidance_scale=1.0, augment=AugmentConfig.preset("none"), prediction_type="flow",
    )
    result = train(config, tmp_path / "run", progress=False)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-10:]) / 10
    assert last < 0.5 * first, f"loss {first:.3f} -> {last:.3f}"
    pipe = MaskToUltrasoundPipeline.from_pretrained(tmp_path / "run")
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"

    items = [LetterboxedPairs(Dataset.open(dataset), 32)[i] for i in range(2)]

    def mask_contrast(images) -> float:
        """Mean brightness inside the mask minus outside it (within the field of view), in [-1, 1] units."""
        values = [img[0][it["label"] == 1].mean() - img[0][(it["label"] == 0) & (it["fov"][0] > 0)].mean()
                  for img, it in zip(images, items, strict=True)]
        return float(sum(values) / len(values))

    torch.manual_seed(0)
    untrained = build_model(pipe.unet.model_config)
    real = mask_contrast([it["image"] for it in items])  # the toy ellipses are ~0.55 brighter
    c_trained = mask_contrast(sample_batch(pipe.unet, items, config, seed=0)[0])
    c_untrained = mask_contrast(sample_batch(untrained, items, config, seed=0)[0])
    assert c_trained > 0.5 * real and c_trained > c_untrained + 0.25, (c_trained, c_untrained, real)


def test_flow_runs_take_the_flow_samplers_and_refuse_the_others_in_one_line(tmp_path: Path) -> None:
    from sonosynth.diffusion.schedulers import FLOW_SCHEDULERS, is_flow, make_scheduler, scheduler_name
    from sonosynth.diffusion.train import train
    from sonosynth.synthesis.edit import repaint
    from sonosynth.synthesis.sampling import load_synthesis_model

    dataset = write_toy_dataset(tmp_path / "toy", n=4, seed=0)
    train(tiny_train_config(dataset, max_steps=2, prediction_type="flow"), tmp_path / "flow", progress=False)
    for name in FLOW_SCHEDULERS:
        model = load_synthesis_model(tmp_path / "flow", scheduler=name)
        assert is_flow(model.pipe.scheduler.config) and scheduler_name(model.pipe.scheduler) == name
        labels = torch.zeros(1, 32, 32, dtype=torch.long)
        images = model.pipe(labels, num_inference_steps=3, output_type="pt").images
        assert images.shape == (1, 1, 32, 32) and torch.isfinite(images).all()
    for name in ("ddim", "ddpm", "dpm++sde"):
        with pytest.raises(SonosynthError, match="a flow-matching run samples with euler, dpm\\+\\+, unipc"):
            load_synthesis_model(tmp_path / "flow", scheduler=name)
    with pytest.raises(SonosynthError, match="'euler' samples flow-matching runs"):
        make_scheduler("euler", config=make_scheduler("ddpm", "v_prediction", 1000).config)
    assert not is_flow(make_scheduler("dpm++", "v_prediction", 1000).config)
    mask = np.zeros((48, 64), np.uint8)
    edited = mask.copy()
    edited[10:20, 10:20] = 1
    with pytest.raises(SonosynthError, match="flow matching"):
        repaint(load_synthesis_model(tmp_path / "flow"), np.zeros((48, 64), np.uint8), mask, edited)
