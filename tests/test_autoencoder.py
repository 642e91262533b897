"""The ultrasound autoencoder: config, losses, training on several datasets, exact resume, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import Killed, kill_at, write_cardiac_dataset, write_toy_dataset
from safetensors.torch import load_file
from typer.testing import CliRunner

from sonosynth.autoencoder.config import AutoencoderConfig
from sonosynth.autoencoder.model import build_autoencoder, frequency_loss
from sonosynth.autoencoder.train import train_autoencoder
from sonosynth.cli import app
from sonosynth.errors import SonosynthError
from sonosynth.training import checkpoints as ckpt


def tiny(datasets: list[Path], **changes) -> AutoencoderConfig:
    settings = dict(datasets=[str(d) for d in datasets], split="all", size=32, patch_size=16, channels=(8, 8),
                    latent_channels=2, discriminator_channels=8, batch_size=2, max_steps=6, adversarial_start=2,
                    checkpoint_every=2, keep_checkpoints=5, sample_every=100, num_samples=2)
    return AutoencoderConfig(**{**settings, **changes})


@pytest.fixture
def two_datasets(tmp_path: Path) -> list[Path]:
    return [write_toy_dataset(tmp_path / "toy"), write_cardiac_dataset(tmp_path / "cardiac", n=4)]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "diffusion_pytorch_model.safetensors"))


def test_config_checks_sizes_and_round_trips(tmp_path: Path) -> None:
    config = AutoencoderConfig()
    assert config.downsampling == 4 and config.train_size == 64 and config.norm_groups == 32
    config.save(tmp_path / "ae.yaml")
    assert AutoencoderConfig.from_yaml(tmp_path / "ae.yaml") == config
    with pytest.raises(SonosynthError, match="size 250 must be a multiple of the downsampling factor 4"):
        AutoencoderConfig(size=250)
    with pytest.raises(SonosynthError, match=r"unknown autoencoder config fields \['depth'\]"):
        AutoencoderConfig.from_dict({"depth": 3})
    assert build_autoencoder(tiny([])).config.block_out_channels == (8, 8)


def test_frequency_loss_sees_lost_speckle() -> None:
    generator = torch.Generator().manual_seed(0)
    speckled = torch.rand(2, 1, 32, 32, generator=generator) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(speckled, 3, 1, 1)  # what pixel L1 alone drifts towards
    assert frequency_loss(speckled, speckled) == 0
    assert frequency_loss(blurred, speckled) > 5 * frequency_loss(speckled + 0.01, speckled)


def test_trains_on_several_datasets_and_loads_with_diffusers(two_datasets: list[Path], tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    result = train_autoencoder(tiny(two_datasets), tmp_path / "ae", progress=False, device="cpu")
    assert result.step == 6 and len(result.losses) == 6
    assert all("adversarial" in row for row in result.losses[2:]) and "adversarial" not in result.losses[0]
    model = AutoencoderKL.from_pretrained(str(tmp_path / "ae" / "model"))  # the ecosystem's own API
    latent = model.encode(torch.zeros(1, 1, 32, 32)).latent_dist.mode()
    assert latent.shape == (1, 2, 16, 16) and model.decode(latent).sample.shape == (1, 1, 32, 32)
    assert (tmp_path / "ae" / "samples" / "step-000006.png").is_file()
    assert len((tmp_path / "ae" / "loss.csv").read_text().splitlines()) == 7


def test_resume_equals_uninterrupted_run(two_datasets: list[Path], tmp_path: Path) -> None:
    config = tiny(two_datasets)
    train_autoencoder(config, tmp_path / "straight", progress=False, device="cpu")
    with pytest.raises(Killed):  # step 5 is lost, the checkpoint of step 4 (adversarial term on) survives
        train_autoencoder(config, tmp_path / "killed", on_step=kill_at(5), progress=False, device="cpu")
    assert ckpt.latest_checkpoint(tmp_path / "killed").name == "step-000004"
    with pytest.raises(SonosynthError, match="already holds a training run"):
        train_autoencoder(config, tmp_path / "killed", progress=False, device="cpu")
    with pytest.raises(SonosynthError, match=r"cannot resume, the config changed \(learning_rate\)"):
        train_autoencoder(tiny(two_datasets, learning_rate=1e-3), tmp_path / "killed", resume=True, progress=False,
                          device="cpu")
    train_autoencoder(config, tmp_path / "killed", resume=True, progress=False, device="cpu")
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_cli_trains_and_refuses_bad_input(two_datasets: list[Path], tmp_path: Path) -> None:
    config = tmp_path / "ae.yaml"
    tiny([], max_steps=2).save(config)
    out = tmp_path / "ae"
    args = ["autoencoder", "train", *map(str, two_datasets), "--config", str(config), "--out", str(out),
            "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert AutoencoderConfig.from_yaml(out / "config.yaml").datasets == [str(d) for d in two_datasets]
    bad = CliRunner().invoke(app, [*args[:-4], "--size", "31", "--out", str(tmp_path / "ae2")])
    assert isinstance(bad.exception, SonosynthError) and "multiple of the downsampling factor" in str(bad.exception)
    assert not (tmp_path / "ae2").exists()
    whole = tmp_path / "ae-whole"  # the decoder on whole images, from the CLI
    tuned = CliRunner().invoke(app, [*args[:-4], "--out", str(whole), "--init", str(out), "--decoder-only",
                                     "--patch-size", "0", "--adversarial-start", "1", "--device", "cpu"])
    assert tuned.exit_code == 0, tuned.output
    saved = AutoencoderConfig.from_yaml(whole / "config.yaml")
    assert saved.decoder_only and saved.patch_size is None and saved.adversarial_start == 1


def test_mixed_precision_trains_from_the_cli(two_datasets: list[Path], tmp_path: Path) -> None:
    """bf16 autocast (the GPU default) with an 8x autoencoder (the 512 px layout), in a fresh process: accelerate
    fixes the precision once per process. A resume may change the precision (it is how, not what, it trains)."""
    import subprocess
    import sys

    tiny(two_datasets, channels=(8, 8, 8, 8), max_steps=2).save(tmp_path / "ae.yaml")
    out = tmp_path / "ae"
    command = [sys.executable, "-c", "from sonosynth.cli import app; app()", "autoencoder", "train",
               *map(str, two_datasets), "--config", str(tmp_path / "ae.yaml"), "--out", str(out), "--device", "cpu",
               "--mixed-precision", "bf16"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert AutoencoderConfig.from_yaml(out / "config.yaml").mixed_precision == "bf16"
    assert "trained to step 2" in done.stdout
    losses = [float(line.split(",")[1]) for line in (out / "loss.csv").read_text().splitlines()[1:]]
    float32 = train_autoencoder(tiny(two_datasets, channels=(8, 8, 8, 8), max_steps=2, mixed_precision="no"),
                                tmp_path / "ae32", progress=False, device="cpu").losses
    assert len(losses) == 2 and losses[0] != float32[0]["loss"]  # computed in bf16 indeed ...
    assert losses[0] == pytest.approx(float32[0]["loss"], rel=0.05)  # ... and to the same loss
    with pytest.raises(SonosynthError, match="mixed_precision must be one of"):
        tiny(two_datasets, mixed_precision="fp8")
    resumed = CliRunner().invoke(app, ["autoencoder", "train", *map(str, two_datasets), "--out", str(out),
                                       "--resume", "--max-steps", "3", "--mixed-precision", "no", "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    assert AutoencoderConfig.from_yaml(out / "config.yaml").mixed_precision == "no"


def test_evaluate_reports_fidelity_against_the_real_images(two_datasets: list[Path], tmp_path: Path) -> None:
    from sonosynth.autoencoder.evaluate import histogram_l1, speckle_snr

    train_autoencoder(tiny(two_datasets[:1], max_steps=2), tmp_path / "ae", progress=False, device="cpu")
    seg = tmp_path / "seg"
    trained = CliRunner().invoke(app, ["segment", "train", str(two_datasets[0]), "--out", str(seg), "--size", "32",
                                       "--net-size", "tiny", "--max-steps", "2", "--val-every", "2",
                                       "--auto-split"])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "fidelity.json"
    result = CliRunner().invoke(app, ["autoencoder", "evaluate", str(tmp_path / "ae"), str(two_datasets[0]),
                                      "--split", "all", "--segmenter", str(seg), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    import json

    measures = json.loads(out.read_text())
    assert measures["images"] == 6 and measures["size"] == 32
    assert 0 < measures["psnr"] < 100 and -1 <= measures["ssim"] <= 1 and 0 <= measures["histogram_l1"] <= 2
    assert {"dice_original", "dice_reconstruction", "snr_change"} <= set(measures)
    # The measures themselves: an image is its own perfect reconstruction.
    image, inside = torch.rand(16, 16), torch.ones(16, 16, dtype=torch.bool)
    assert histogram_l1(image, image) == 0 and histogram_l1(image * 0.5, image) > 0.5
    assert speckle_snr(torch.full((16, 16), 0.5) + 0.01 * image, inside) > speckle_snr(image, inside)
