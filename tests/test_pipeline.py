"""MaskToUltrasoundPipeline, schedulers by name and the `sonosynth sample` command, on tiny models."""

from __future__ import annotations

from pathlib import Path

import factories
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sonosynth import MaskToUltrasoundPipeline
from sonosynth.data.format import Dataset
from sonosynth.data.transforms import field_of_view
from sonosynth.diffusion.schedulers import make_scheduler, scheduler_name
from sonosynth.errors import DataError, SonosynthError

SIDE = 16


def tiny_pipeline(kind: str = "spade", class_cardinalities: tuple[int, ...] = ()):
    values = {f"attr{i}": [f"v{j}" for j in range(c)] for i, c in enumerate(class_cardinalities)}
    return factories.tiny_pipeline(kind, class_values=values, size=SIDE)


def save_run(run: Path, kind: str = "spade", class_attributes: tuple[str, ...] = ()) -> Path:
    """A run folder as `sonosynth train` leaves it: config.yaml and the pipeline in model/."""
    return factories.save_tiny_run(run, kind=kind, class_values={name: ["a", "b"] for name in class_attributes},
                                   size=SIDE, scheduler="dpm++", training_step=12, random_weights=True)


def generators(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def label_maps(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    labels = torch.stack([((yy - 8) ** 2 + (xx - 8 + i) ** 2 < 20).long() for i in range(n)])
    fov = torch.ones(n, 1, SIDE, SIDE)
    fov[..., :, :3] = 0
    return labels, fov


def test_round_trip_model_dir_and_run_dir(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    labels, fov = label_maps()
    expected = pipe(labels, fov=fov, num_inference_steps=3, generator=generators(3)).images
    pipe.save_pretrained(tmp_path / "run" / "model")
    for where in (tmp_path / "run" / "model", tmp_path / "run"):
        loaded = MaskToUltrasoundPipeline.from_pretrained(where)
        loaded.set_progress_bar_config(disable=True)
        assert loaded.config.sample_size == SIDE and loaded.config.training_step == 12
        assert loaded.scheduler.config.prediction_type == "v_prediction"
        got = loaded(labels, fov=fov, num_inference_steps=3, generator=generators(3)).images
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(SonosynthError, match="model_index.json"):
        MaskToUltrasoundPipeline.from_pretrained(tmp_path)
    with pytest.raises(SonosynthError, match="not found"):
        MaskToUltrasoundPipeline.from_pretrained(tmp_path / "missing")


def test_weights_that_do_not_fit_the_network_are_an_error(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tiny_pipeline().save_pretrained(tmp_path / "model")
    weights = next((tmp_path / "model" / "unet").glob("*.safetensors"))
    tensors = load_file(weights)
    dropped = sorted(tensors)[0]
    tensors[dropped.replace("unet.", "unet.renamed_", 1)] = tensors.pop(dropped)
    save_file(tensors, weights)
    with pytest.raises(SonosynthError, match="do not fit this version"):
        MaskToUltrasoundPipeline.from_pretrained(tmp_path / "model")


def test_non_finite_output_is_an_error() -> None:
    pipe = tiny_pipeline()
    with torch.no_grad():
        next(pipe.unet.parameters()).fill_(float("nan"))
    labels, fov = label_maps(1)
    with pytest.raises(SonosynthError, match="non-finite"):
        pipe(labels, fov=fov, num_inference_steps=2, generator=generators(1))


def test_determinism_seeds_and_batch_size() -> None:
    pipe = tiny_pipeline()
    labels, fov = label_maps(3)
    a = pipe(labels, fov=fov, num_inference_steps=3, generator=generators(3), batch_size=3).images
    b = pipe(labels, fov=fov, num_inference_steps=3, generator=generators(3), batch_size=2).images
    c = pipe(labels, fov=fov, num_inference_steps=3, generator=generators(3, seed=10)).images
    assert a.shape == (3, SIDE, SIDE) and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    np.testing.assert_allclose(a, b, atol=1e-5)  # each image depends only on its own generator
    assert np.abs(a - c).max() > 1e-3
    assert np.all(a[:, :, :3] == 0)  # outside the fov is black


def test_guidance_on_off() -> None:
    pipe = tiny_pipeline()
    labels, fov = label_maps(2)
    plain = pipe(labels, fov=fov, num_inference_steps=3, guidance_scale=1.0, generator=generators(2)).images
    guided = pipe(labels, fov=fov, num_inference_steps=3, guidance_scale=3.0, generator=generators(2)).images
    assert np.abs(plain - guided).max() > 1e-3
    joint = tiny_pipeline("joint")  # nothing to drop: guidance is a no-op, not an error
    j1 = joint(fov=fov, num_inference_steps=2, guidance_scale=1.0, generator=generators(2)).images
    j3 = joint(fov=fov, num_inference_steps=2, guidance_scale=3.0, generator=generators(2)).images
    np.testing.assert_array_equal(j1, j3)


def test_joint_generates_masks() -> None:
    pipe = tiny_pipeline("joint")
    _, fov = label_maps(2)
    out = pipe(fov=fov, num_inference_steps=2, generator=generators(2), output_type="pt")
    assert out.images.shape == (2, 1, SIDE, SIDE) and out.masks.shape == (2, SIDE, SIDE)
    assert out.masks.dtype == torch.long and out.masks.max() <= 1 and torch.all(out.masks[:, :, :3] == 0)
    square = pipe(num_images=3, num_inference_steps=2, generator=generators(3))
    assert square.images.shape == (3, SIDE, SIDE) and square.masks.shape == (3, SIDE, SIDE)
    with pytest.raises(ValueError, match="joint"):
        pipe(torch.zeros(1, SIDE, SIDE, dtype=torch.long))


def test_class_conditioned_sampling() -> None:
    pipe = tiny_pipeline(class_cardinalities=(2,))
    labels, fov = label_maps(2)
    kwargs = {"fov": fov, "num_inference_steps": 2, "guidance_scale": 1.0}
    zero = pipe(labels, class_labels=torch.tensor([[0], [0]]), generator=generators(2), **kwargs).images
    one = pipe(labels, class_labels=torch.tensor([[1], [1]]), generator=generators(2), **kwargs).images
    unknown = pipe(labels, class_labels=torch.tensor([[-1], [-1]]), generator=generators(2), **kwargs).images
    missing = pipe(labels, generator=generators(2), **kwargs).images
    assert np.abs(zero - one).max() > 1e-3
    np.testing.assert_array_equal(unknown, missing)


@pytest.mark.parametrize("name", ["dpm++", "dpm++sde", "unipc", "ddim", "ddpm"])
def test_schedulers_by_name_keep_the_noise_schedule(name: str) -> None:
    trained = make_scheduler("ddpm", prediction_type="v_prediction", num_train_timesteps=500)
    scheduler = make_scheduler(name, config=trained.config)
    assert scheduler_name(scheduler) == name
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.num_train_timesteps == 500
    pipe = tiny_pipeline()
    pipe.scheduler = scheduler
    labels, fov = label_maps(1)
    image = pipe(labels, fov=fov, num_inference_steps=2, generator=generators(1)).images
    again = pipe(labels, fov=fov, num_inference_steps=2, generator=generators(1)).images
    np.testing.assert_array_equal(image, again)  # ddpm's step noise also comes from the generators
    batched = pipe(labels.repeat(2, 1, 1), fov=fov.repeat(2, 1, 1, 1), num_inference_steps=2,
                   generator=generators(2)).images
    np.testing.assert_allclose(batched[:1], image, atol=1 / 255)  # each image's noise is its own generator's
    assert np.abs(batched[1] - batched[0]).max() > 1e-3
    with pytest.raises(SonosynthError, match="unknown scheduler"):
        make_scheduler("heun")


PROVENANCE_COLUMNS = ("model", "checkpoint_step", "scheduler", "steps", "guidance", "seed", "source_id")


def test_sample_cli_writes_dataset_with_provenance(tmp_path: Path, toy_dataset: Path) -> None:
    from sonosynth.cli import app
    from sonosynth.seeds import sample_seeds

    run = save_run(tmp_path / "run", class_attributes=("view",))
    out = tmp_path / "synthetic"
    args = ["sample", str(run), "--source", str(toy_dataset), "--out", str(out), "--n", "3", "--steps", "2",
            "--batch-size", "2", "--split", "all", "--seed", "5", "--output-size", "source"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    synthetic, source = Dataset.open(out), Dataset.open(toy_dataset)
    assert len(synthetic) == 3
    by_id = {r.id: i for i, r in enumerate(source.records)}
    assert len({r.extra["source_id"] for r in synthetic.records}) == 3  # train masks: each once before repeats
    for sample, seed in zip(synthetic, sample_seeds(5, 3), strict=True):
        record = sample.record
        for column in PROVENANCE_COLUMNS:
            assert record.extra[column] != "", column
        original = source[by_id[record.extra["source_id"]]]
        assert record.extra["seed"] == str(seed)
        assert record.extra["scheduler"] == "dpm++" and record.extra["checkpoint_step"] == "12"
        assert record.attributes["view"] == original.record.attributes["view"]
        assert sample.image.shape == original.image.shape  # at the source size
        np.testing.assert_array_equal(sample.mask, original.mask)
        assert record.spacing_mm == original.record.spacing_mm
        assert np.all(sample.image[~field_of_view(original.image)] == 0)

    again = tmp_path / "again"
    args_again = [*args[:5], str(again), *args[6:]]
    args_again[args_again.index("--batch-size") + 1] = "3"
    args_again[args_again.index("--source")] = "--masks"  # the old spelling still works, hidden
    assert CliRunner().invoke(app, args_again).exit_code == 0
    for a, b in zip(Dataset.open(out), Dataset.open(again), strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1  # same seed, other batch size

    square = tmp_path / "square"
    args_square = [*args[:5], str(square), *args[6:-2], "--output-size", "square", "--scheduler", "ddim"]
    assert CliRunner().invoke(app, args_square).exit_code == 0
    first = Dataset.open(square)[0]
    assert first.image.shape == (SIDE, SIDE) and first.record.extra["scheduler"] == "ddim"


def test_sample_and_generate_write_the_same_manifest(tmp_path: Path, toy_dataset: Path) -> None:
    from sonosynth.cli import app

    run = save_run(tmp_path / "run", class_attributes=("view",))
    common = ["--source", str(toy_dataset), "--n", "4", "--steps", "2", "--seed", "3"]
    assert CliRunner().invoke(app, ["sample", str(run), *common, "--out", str(tmp_path / "s")]).exit_code == 0
    assert CliRunner().invoke(app, ["generate", str(run), *common, "--mask-source", "train",
                                    "--out", str(tmp_path / "g")]).exit_code == 0
    sampled, generated = (tmp_path / "s" / "manifest.csv").read_text(), (tmp_path / "g" / "manifest.csv").read_text()
    assert sampled == generated and len(sampled.splitlines()) == 5
    for name in sorted(p.name for p in (tmp_path / "s" / "images").iterdir()):
        assert (tmp_path / "s" / "images" / name).read_bytes() == (tmp_path / "g" / "images" / name).read_bytes()


def test_a_model_folder_copied_alone_generates_the_same_bytes(tmp_path: Path, toy_dataset: Path) -> None:
    """Class attributes and their value lists travel with the model: no config.yaml, no training dataset."""
    import shutil

    from sonosynth.synthesis.generate import GenerateConfig, generate_dataset

    run = save_run(tmp_path / "run", class_attributes=("view",))
    alone = tmp_path / "elsewhere" / "model"
    shutil.copytree(run / "model", alone)
    shutil.rmtree(run / "model")
    shutil.copytree(alone, run / "model")  # the run keeps its config.yaml; the copy has nothing else
    config = GenerateConfig(n=3, steps=2, seed=1, device="cpu")
    a = generate_dataset(run, toy_dataset, tmp_path / "a", config, progress=False)
    b = generate_dataset(alone, toy_dataset, tmp_path / "b", config, progress=False)
    assert [r.attributes["view"] for r in Dataset.open(a).records] == [r.attributes["view"]
                                                                       for r in Dataset.open(b).records]
    for name in sorted(p.name for p in (a / "images").iterdir()):
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
    assert not (alone.parent / "config.yaml").exists()


def test_sample_cli_joint_and_bad_input(tmp_path: Path, toy_dataset: Path) -> None:
    from sonosynth.cli import app

    run = save_run(tmp_path / "run", kind="joint")
    out = tmp_path / "joint"
    result = CliRunner().invoke(app, ["sample", str(run), "--out", str(out), "--n", "2", "--steps", "2"])
    assert result.exit_code == 0, result.output
    pairs = Dataset.open(out)
    assert len(pairs) == 2 and pairs[0].image.shape == (SIDE, SIDE) and pairs[0].mask.max() <= 1

    bad = CliRunner().invoke(app, ["sample", str(run), "--masks", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert isinstance(bad.exception, DataError) and "nope" in str(bad.exception)
    spade_run = save_run(tmp_path / "spade")
    no_masks = CliRunner().invoke(app, ["sample", str(spade_run), "--out", str(tmp_path / "y"), "--n", "1"])
    assert isinstance(no_masks.exception, SonosynthError) and "--source" in str(no_masks.exception)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_img2img_enters_the_same_loop_part_way() -> None:
    """`image` + `strength` runs the tail of the schedule; given `latents` replace drawn noise exactly."""
    pipe = tiny_pipeline()
    labels, fov = label_maps(2)
    calls = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    start = torch.zeros(2, 1, SIDE, SIDE)
    part = pipe(labels, fov=fov, image=start, strength=0.5, num_inference_steps=6, guidance_scale=1.0,
                generator=generators(2), output_type="pt").images
    assert len(calls) == 3 and part.shape == (2, 1, SIDE, SIDE) and torch.all(part[..., :3] == -1)
    full = pipe(labels, fov=fov, num_inference_steps=3, generator=generators(2), output_type="pt").images
    noise = torch.stack([torch.randn(1, SIDE, SIDE, generator=g) for g in generators(2)])
    given = pipe(labels, fov=fov, num_inference_steps=3, latents=noise, output_type="pt").images
    torch.testing.assert_close(given, full)
    with pytest.raises(ValueError, match="strength"):
        pipe(labels, fov=fov, image=start, strength=0.0)
    with pytest.raises(ValueError, match="image must be"):
        pipe(labels, fov=fov, image=start[:1])
    with pytest.raises(ValueError, match="pass image="):
        pipe(labels, fov=fov, strength=0.5)
