"""Latent diffusion: `sonosynth train --autoencoder AE` trains on latents; the saved pipeline holds the autoencoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import Killed, kill_at, tiny_train_config, write_toy_dataset
from safetensors.torch import load_file
from typer.testing import CliRunner

from sonosynth.autoencoder.config import AutoencoderConfig
from sonosynth.autoencoder.model import build_autoencoder
from sonosynth.cli import app
from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
from sonosynth.diffusion.train import train
from sonosynth.errors import SonosynthError
from sonosynth.models.configs import ModelConfig


@pytest.fixture
def autoencoder(tmp_path: Path) -> Path:
    """An untrained 2x autoencoder with 2 latent channels, saved as `sonosynth autoencoder train` saves it."""
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig(size=32, patch_size=None, channels=(8, 8), latent_channels=2))
    model.save_pretrained(str(tmp_path / "ae" / "model"))
    return tmp_path / "ae"


def unet_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next((run / "model" / "unet").glob("*.safetensors"))))


def test_the_condition_is_area_resized_to_the_latent_grid() -> None:
    from sonosynth.models.denoiser import build_model

    model = build_model(ModelConfig(size="tiny", latent_channels=2, latent_factor=2))
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :2, :1] = 1  # one pixel of four in the top-left latent cell, over two cells down
    condition = model.make_condition(labels)
    assert condition.shape == (1, 3, 8, 8)  # built at the image's side (so guidance nulls it there) ...
    encoded = model.encode_condition(condition)
    assert encoded.shape == (1, 3, 4, 4)  # ... and brought to the latent grid inside the network: 2 labels + fov
    assert encoded[0, 1, 0, 0] == pytest.approx(0.5) and encoded[0, 1, 0, 1] == 0
    assert model.model_config.sample_channels == 2 and model.model_config.downsampling_factor == 8
    with pytest.raises(SonosynthError, match="latent models are spade or concat"):
        ModelConfig(kind="joint", latent_channels=2, latent_factor=2)


def test_a_learned_condition_encoder_starts_as_the_area_resize_and_learns_what_it_cannot_see(
        autoencoder: Path, tmp_path: Path) -> None:
    from sonosynth.models.denoiser import build_model

    model = build_model(ModelConfig(size="tiny", latent_channels=2, latent_factor=4, condition_encoder="learned"))
    left, right = torch.zeros(2, 1, 8, 8, dtype=torch.long).unbind(0)
    left[0, :, :2], right[0, :, 2:4] = 1, 1  # the same label share in each 4x4 cell, at other places in it
    area = [torch.nn.functional.avg_pool2d(model.make_condition(m), 4) for m in (left, right)]
    assert torch.equal(area[0], area[1])  # the area resize cannot tell them apart
    assert torch.equal(model.encode_condition(model.make_condition(left)), area[0])  # untrained: exactly area
    optimizer = torch.optim.Adam(model.learned_condition_encoder.parameters(), lr=0.05)
    for _ in range(40):  # the residual can learn to tell them apart: the head channel 1 on the left, 0 on the right
        optimizer.zero_grad()
        a, b = (model.encode_condition(model.make_condition(m))[0, 1, 0, 0] for m in (left, right))
        ((a - 1) ** 2 + b ** 2).backward()
        optimizer.step()
    a, b = (model.encode_condition(model.make_condition(m))[0, 1, 0, 0] for m in (left, right))
    assert a - b > 0.5
    with pytest.raises(SonosynthError, match="condition_encoder must be one of"):
        ModelConfig(condition_encoder="bilinear")
    data = write_toy_dataset(tmp_path / "toy")
    config = tiny_train_config(data, max_steps=1)
    config.model.condition_encoder = "learned"
    with pytest.raises(SonosynthError, match="'learned' is for latent models"):
        train(config, tmp_path / "pixel", progress=False, device="cpu")
    config.autoencoder = str(autoencoder)
    train(config, tmp_path / "run", progress=False, device="cpu")
    pipe = MaskToUltrasoundPipeline.from_pretrained(tmp_path / "run")
    assert pipe.unet.model_config.condition_encoder == "learned"
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[:, 8:20, 8:24] = 1
    assert pipe(labels, num_inference_steps=2, output_type="pt").images.shape == (1, 1, 32, 32)


def test_latent_training_saves_a_pipeline_that_samples_images(autoencoder: Path, tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy")
    result = train(tiny_train_config(data, autoencoder=str(autoencoder), max_steps=3), tmp_path / "run",
                   progress=False, device="cpu")
    assert result.step == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    pipe = MaskToUltrasoundPipeline.from_pretrained(tmp_path / "run")
    assert pipe.vae is not None and pipe.unet.model_config.latent_channels == 2
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the training images
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, 8:20, 8:24] = 1
    fov = torch.ones(2, 1, 32, 32)
    fov[:, :, :, :4] = 0
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    out = pipe(labels, fov=fov, num_inference_steps=2, generator=generators, output_type="pt")
    assert out.images.shape == (2, 1, 32, 32)  # decoded to pixels
    assert (out.images[:, :, :, :4] == -1).all()  # black outside the field of view
    again = pipe(labels[:1], fov=fov[:1], num_inference_steps=2, generator=[torch.Generator().manual_seed(0)],
                 output_type="pt")
    assert torch.allclose(again.images[0], out.images[0], atol=1e-5)  # per-image seeds: the batch does not matter
    with pytest.raises(ValueError, match=r"latents must be \(2, 2, 16, 16\)"):
        pipe(labels, num_inference_steps=2, latents=torch.zeros(2, 2, 32, 32))


def test_latent_training_encodes_each_augmented_view_once(autoencoder: Path) -> None:
    from sonosynth.autoencoder.model import load_autoencoder
    from sonosynth.diffusion.data import LatentCache, encode_latents
    from sonosynth.training.stream import StreamBatchSampler

    stream = StreamBatchSampler(3, 4, seed=5, views=2)
    keys = [key for batch, _ in zip(stream, range(30), strict=False) for key in batch]
    assert len(set(keys)) == 6  # 120 positions, but each of 3 items only in its 2 views
    assert StreamBatchSampler(3, 4, seed=5, views=2, start=7).batch(7) == stream.batch(7)  # resumable
    vae = load_autoencoder(str(autoencoder))
    calls = []
    encode = vae.encode
    vae.encode = lambda x: calls.append(len(x)) or encode(x)
    cache = LatentCache(vae)
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    first = cache(images, torch.tensor([[0, 11], [1, 12], [0, 11]]))
    again = cache(images[[1, 0]], torch.tensor([[1, 12], [0, 11]]))
    assert calls == [1, 1]  # two distinct keys, each encoded once and alone
    assert torch.equal(first[0], first[2]) and torch.equal(again[1], first[0]) and torch.equal(again[0], first[1])
    assert torch.allclose(first[0], encode_latents(vae, images[:1])[0], atol=1e-6)


def test_latent_resume_equals_uninterrupted_run(autoencoder: Path, tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy")
    config = tiny_train_config(data, autoencoder=str(autoencoder), max_steps=4)
    train(config, tmp_path / "straight", progress=False, device="cpu")
    with pytest.raises(Killed):
        train(config, tmp_path / "killed", on_step=kill_at(3), progress=False, device="cpu")
    train(config, tmp_path / "killed", resume=True, progress=False, device="cpu")
    straight, resumed = unet_weights(tmp_path / "straight"), unet_weights(tmp_path / "killed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_cli_generates_and_edits_with_a_latent_run(autoencoder: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    data = write_toy_dataset(tmp_path / "toy")
    config = tmp_path / "train.yaml"
    tiny_train_config(data, max_steps=2).save(config)
    run = tmp_path / "run"
    trained = CliRunner().invoke(app, ["train", str(data), "--config", str(config), "--autoencoder", str(autoencoder),
                                       "--out", str(run), "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "synthetic"
    generated = CliRunner().invoke(app, ["generate", str(run), "--source", str(data), "--n", "2", "--steps", "2",
                                         "--out", str(out), "--device", "cpu"])
    assert generated.exit_code == 0, generated.output
    assert len(list((out / "images").iterdir())) == 2

    # RePaint on latents: the edit region is regenerated, every other pixel is the input's.
    first = sorted((data / "images").iterdir())[0]
    mask = np.asarray(Image.open(data / "masks" / first.name))
    edited = mask.copy()
    edited[10:20, 10:30] = 1
    Image.fromarray(edited).save(tmp_path / "edited.png")
    result = CliRunner().invoke(app, ["edit", str(run), "--image", str(first),
                                      "--mask", str(data / "masks" / first.name),
                                      "--edited-mask", str(tmp_path / "edited.png"), "--steps", "4",
                                      "--out", str(tmp_path / "edit"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    original = np.asarray(Image.open(first))
    output = np.asarray(Image.open(tmp_path / "edit" / "image.png"))
    region = np.asarray(Image.open(tmp_path / "edit" / "region.png")) > 0
    assert region.any() and np.array_equal(output[~region], original[~region])
    assert not np.array_equal(output[region], original[region])

    bad = CliRunner().invoke(app, ["train", str(data), "--config", str(config), "--autoencoder", str(data),
                                   "--out", str(tmp_path / "run2"), "--device", "cpu"])
    assert isinstance(bad.exception, SonosynthError) and "not an autoencoder" in str(bad.exception)
    assert not (tmp_path / "run2").exists()


def test_init_starts_from_an_earlier_run_and_refuses_another_network(tmp_path: Path) -> None:
    """`--init RUN` fine-tunes: with a zero learning rate the new run's saved weights are the old run's."""
    data = write_toy_dataset(tmp_path / "toy")
    first = train(tiny_train_config(data, max_steps=2), tmp_path / "first", progress=False, device="cpu")
    assert first.step == 2
    frozen = tiny_train_config(data, max_steps=1, learning_rate=0.0, init=str(tmp_path / "first"))
    train(frozen, tmp_path / "second", progress=False, device="cpu")
    before, after = unet_weights(tmp_path / "first"), unet_weights(tmp_path / "second")
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = train(tiny_train_config(data, max_steps=1, init=str(tmp_path / "first")), tmp_path / "third",
                  progress=False, device="cpu")
    fresh = train(tiny_train_config(data, max_steps=1), tmp_path / "fresh", progress=False, device="cpu")
    assert moved.losses[0] != fresh.losses[0]  # it did not start from scratch
    other = tiny_train_config(data, max_steps=1, init=str(tmp_path / "first"),
                              model=ModelConfig(size="tiny", kind="concat"))
    with pytest.raises(SonosynthError, match="its weights do not fit this model"):
        train(other, tmp_path / "fourth", progress=False, device="cpu")
    assert not (tmp_path / "fourth").exists()


def test_autoencoder_init_starts_from_an_earlier_autoencoder(tmp_path: Path) -> None:
    from sonosynth.autoencoder.train import train_autoencoder

    data = write_toy_dataset(tmp_path / "toy")
    settings = dict(datasets=[str(data)], split="all", size=32, patch_size=16, channels=(8, 8), latent_channels=2,
                    discriminator_channels=8, batch_size=2, adversarial_start=100, sample_every=100, num_samples=1)
    train_autoencoder(AutoencoderConfig(**settings, max_steps=2), tmp_path / "ae1", progress=False, device="cpu")
    train_autoencoder(AutoencoderConfig(**settings, max_steps=1, learning_rate=0.0, init=str(tmp_path / "ae1")),
                      tmp_path / "ae2", progress=False, device="cpu")
    name = "diffusion_pytorch_model.safetensors"
    before, after = load_file(str(tmp_path / "ae1" / "model" / name)), load_file(str(tmp_path / "ae2" / "model" / name))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_decoder_only_fine_tuning_keeps_the_latent_space(tmp_path: Path) -> None:
    from sonosynth.autoencoder.train import train_autoencoder

    data = write_toy_dataset(tmp_path / "toy")
    settings = dict(datasets=[str(data)], split="all", size=32, channels=(8, 8), latent_channels=2,
                    discriminator_channels=8, batch_size=2, adversarial_start=100, sample_every=100, num_samples=1)
    train_autoencoder(AutoencoderConfig(**settings, patch_size=16, max_steps=2), tmp_path / "ae1", progress=False,
                      device="cpu")
    # whole images now, as a patch-trained model must be before it reconstructs whole images faithfully
    train_autoencoder(AutoencoderConfig(**settings, patch_size=None, max_steps=3, learning_rate=1e-2,
                                        init=str(tmp_path / "ae1"), decoder_only=True),
                      tmp_path / "ae2", progress=False, device="cpu")
    name = "diffusion_pytorch_model.safetensors"
    before, after = load_file(str(tmp_path / "ae1" / "model" / name)), load_file(str(tmp_path / "ae2" / "model" / name))
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    with pytest.raises(SonosynthError, match="give init"):
        AutoencoderConfig(decoder_only=True)
