"""Two-stage sampling: shapes, cost in network evaluations, and SDEdit's strength semantics."""

from __future__ import annotations

import pytest
import torch
from factories import oracle_for_constant, save_tiny_run

from sonosynth.errors import SonosynthError
from sonosynth.synthesis.refine import TwoStageConfig, refine, two_stage_sample
from sonosynth.synthesis.sampling import load_synthesis_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_synthesis_model(save_tiny_run(tmp_path_factory.mktemp("run") / "run", size=16), scheduler="dpm++")


def inputs(batch: int = 2, size: int = 16):
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    labels[:, 4:12, 5:11] = 1
    fov = torch.ones(batch, 1, size, size)
    fov[:, :, :, :2] = 0
    return labels, fov


def generators(batch: int = 2, seed: int = 0):
    return [torch.Generator().manual_seed(seed + i) for i in range(batch)]


def count_evaluations(model, monkeypatch) -> list[int]:
    calls = []
    forward = model.unet.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.unet, "forward", counting)
    return calls


def test_two_stage_cost_and_shapes(model, monkeypatch):
    labels, fov = inputs()
    config = TwoStageConfig(stage1_steps=3, stage2_steps=4, strength=0.5)
    calls = count_evaluations(model, monkeypatch)
    images = two_stage_sample(model, labels, fov, None, config, generators())
    assert images.shape == (2, 1, 16, 16) and len(calls) == config.evaluations == 5
    assert torch.all(images[..., :2] == -1.0)  # outside the field of view
    assert images.min() >= -1 and images.max() <= 1


def test_finer_second_stage(model):
    labels, fov = inputs()
    config = TwoStageConfig(stage1_steps=2, stage2_steps=2, strength=0.5, stage2_size=32)
    images = two_stage_sample(model, labels, fov, None, config, generators())
    assert images.shape == (2, 1, 32, 32)
    with pytest.raises(SonosynthError, match="multiple"):
        two_stage_sample(model, labels, fov, None, TwoStageConfig(stage2_size=33), generators())


def test_low_strength_keeps_the_draft_high_strength_replaces_it(model):
    labels, _ = inputs()
    draft = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    gentle = refine(model, draft, labels, None, None, steps=20, strength=0.05, guidance_scale=1.0,
                    generators=generators())
    strong = refine(model, draft, labels, None, None, steps=20, strength=1.0, guidance_scale=1.0,
                    generators=generators())
    assert (gentle - draft).abs().mean() < 0.5 * (strong - draft).abs().mean()


def test_per_image_generators_make_results_independent_of_the_batch(model):
    labels, fov = inputs(batch=3)
    config = TwoStageConfig(stage1_steps=2, stage2_steps=2)
    together = two_stage_sample(model, labels, fov, None, config, generators(3))
    alone = two_stage_sample(model, labels[1:2], fov[1:2], None, config, generators(3)[1:2])
    assert torch.allclose(together[1:2], alone, atol=1e-4)


def test_bad_config():
    with pytest.raises(SonosynthError, match="strength"):
        TwoStageConfig(strength=0.0)


def test_exact_model_gives_its_image_after_both_stages(model, monkeypatch):


    monkeypatch.setattr(model.unet, "forward", oracle_for_constant(model, 0.4))
    labels, fov = inputs()
    draft = torch.zeros(2, 1, 16, 16)
    refined = refine(model, draft, labels, None, None, steps=10, strength=0.5, guidance_scale=1.5,
                     generators=generators())
    assert torch.allclose(refined, torch.full_like(refined, 0.4), atol=1e-3)
    images = two_stage_sample(model, labels, fov, None, TwoStageConfig(stage1_steps=3, stage2_steps=6),
                              generators())
    inside = fov.expand_as(images) > 0.5
    assert torch.allclose(images[inside], torch.full_like(images[inside], 0.4), atol=1e-3)
