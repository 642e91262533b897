"""Training: config round trip, data stream, checkpoints (atomic, rotated, exact resume), 2 processes, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from factories import Killed, kill_at, tiny_train_config, write_toy_dataset
from safetensors.torch import load_file

from sonosynth.augment import AugmentConfig
from sonosynth.diffusion.config import TrainConfig, with_model_size
from sonosynth.diffusion.train import train
from sonosynth.errors import SonosynthError
from sonosynth.models.configs import ModelConfig
from sonosynth.training import checkpoints as ckpt
from sonosynth.training.stream import StreamBatchSampler

REPO = Path(__file__).resolve().parents[1]


# ---- config ----------------------------------------------------------------------------------------


def test_config_yaml_round_trip(tmp_path):
    config = TrainConfig(
        dataset="data/x",
        model=ModelConfig(kind="concat", size="tiny", num_labels=3, class_cardinalities=[2]),
        patch_size=32,
        class_attributes=["view"],
        prediction_type="epsilon",
        augment=AugmentConfig.from_dict({"preset": "gentle", "flip_prob": 0.5, "rotate_deg": [-2, 2]}),
        log_with="tensorboard",
    )
    config.save(tmp_path / "config.yaml")
    loaded = TrainConfig.from_yaml(tmp_path / "config.yaml")
    assert loaded == config
    assert loaded.model.channels == ModelConfig(size="tiny").channels  # the resolved preset is saved

    (tmp_path / "bad.yaml").write_text("lr: 0.1\nlearning_rate: 3\n")
    with pytest.raises(SonosynthError, match="bad.yaml: lr is the old name of learning_rate: give one of them"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(SonosynthError, match="prediction_type"):
        TrainConfig(prediction_type="x0")


def test_changing_size_re_resolves_the_preset():
    small = ModelConfig(size="small", kind="concat")
    tiny = with_model_size(small, "tiny")
    assert tiny.size == "tiny" and tiny.kind == "concat" and tiny.channels == ModelConfig(size="tiny").channels


# ---- data order --------------------------------------------------------------------------------------


def test_stream_is_a_function_of_position():
    full = StreamBatchSampler(5, 3, seed=7)
    first = [b for b, _ in zip(full, range(6), strict=False)]
    resumed = StreamBatchSampler(5, 3, seed=7, start=4)
    assert [b for b, _ in zip(resumed, range(2), strict=False)] == first[4:6]
    # Every epoch is a permutation: 5 items over 15 positions -> each index exactly 3 times.
    counts = torch.bincount(torch.tensor([i for b in first[:5] for i, _ in b]), minlength=5)
    assert counts.tolist() == [3, 3, 3, 3, 3]
    # Augmentation seeds differ per position, so repeated items are augmented differently.
    assert len({s for b in first for _, s in b}) == 18
    # Two processes take disjoint halves of the same global batch.
    rank0, rank1 = StreamBatchSampler(6, 3, 7, 0, 2), StreamBatchSampler(6, 3, 7, 1, 2)
    assert sorted(i for i, _ in rank0.batch(0) + rank1.batch(0)) == list(range(6))


# ---- checkpoint mechanics --------------------------------------------------------------------------


def test_rotation_keeps_last_k_and_ignores_partial(tmp_path):
    for step in (1, 2, 3, 4):
        tmp = ckpt.begin_checkpoint(tmp_path, step)
        ckpt.save_tensors(tmp / "model.safetensors", {"w": torch.full((2,), float(step))})
        ckpt.finish_checkpoint(tmp, {"step": step}, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    # A write killed half-way leaves only a .tmp folder, which is not a checkpoint.
    partial = ckpt.begin_checkpoint(tmp_path, 5)
    ckpt.save_tensors(partial / "model.safetensors", {"w": torch.zeros(2)})
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000004"
    ckpt.rotate_checkpoints(tmp_path, keep=2)
    assert not partial.exists()


def test_optimizer_and_rng_state_round_trip():
    param = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.AdamW([param], lr=1e-2)
    param.grad = torch.ones(3)
    optimizer.step()
    tensors, meta = ckpt.flatten_optimizer_state(optimizer.state_dict())
    import json

    meta = json.loads(json.dumps(meta))  # what the checkpoint stores
    restored = torch.optim.AdamW([torch.nn.Parameter(param.detach().clone())], lr=1.0)
    restored.load_state_dict(ckpt.unflatten_optimizer_state(tensors, meta))
    a, b = optimizer.state_dict(), restored.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 1e-2
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(a["state"][0][key], b["state"][0][key])

    import random

    import numpy as np

    tensors, meta = ckpt.capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng_state(tensors, json.loads(json.dumps(meta)))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_checkpoint_write_failure_leaves_previous_intact(toy_dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_train_config(toy_dataset, max_steps=2), run, progress=False)
    assert ckpt.latest_checkpoint(run).name == "step-000002"

    real_save = ckpt.save_tensors

    def failing_save(path, tensors):
        if path.name == "optimizer.safetensors":
            raise OSError("disk full")
        real_save(path, tensors)

    monkeypatch.setattr(ckpt, "save_tensors", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(tiny_train_config(toy_dataset, max_steps=4), run, resume=True, progress=False)
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    assert ckpt.read_state(ckpt.latest_checkpoint(run))["step"] == 2


# ---- resume ------------------------------------------------------------------------------------------


def test_resume_equals_uninterrupted_run(toy_dataset, tmp_path):
    config = tiny_train_config(toy_dataset, max_steps=6, checkpoint_every=2, keep_checkpoints=2,
                         augment=AugmentConfig.from_dict({"preset": "gentle", "probability": 1.0}),
                         cond_drop_prob=0.3)
    straight = train(config, tmp_path / "straight", progress=False)

    # Killed at step 5: the checkpoint of step 4 survives, step 5 is lost and redone.
    with pytest.raises(Killed):
        train(config, tmp_path / "killed", on_step=kill_at(5), progress=False)
    assert ckpt.latest_checkpoint(tmp_path / "killed").name == "step-000004"
    with pytest.raises(SonosynthError, match="already holds a training run"):
        train(config, tmp_path / "killed", progress=False)
    resumed = train(config, tmp_path / "killed", resume=True, progress=False)

    assert resumed.step == 6 and len(resumed.losses) == 2
    assert resumed.losses == straight.losses[4:]
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(tmp_path / "straight" / "checkpoints" / "step-000006" / name)
        b = load_file(tmp_path / "killed" / "checkpoints" / "step-000006" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "killed")] == [4, 6]


def test_the_saved_model_carries_its_class_values(toy_dataset, tmp_path):
    """Generation needs no training dataset: attribute names and value order are saved with the model."""
    from sonosynth import MaskToUltrasoundPipeline

    train(tiny_train_config(toy_dataset, max_steps=1, class_attributes=["view"]), tmp_path / "run", progress=False)
    pipe = MaskToUltrasoundPipeline.from_pretrained(tmp_path / "run" / "model")
    assert pipe.class_attributes == {"view": ["a", "b"]}
    assert pipe.unet.model_config.class_cardinalities == [2]


def test_resume_refuses_a_changed_config(toy_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_train_config(toy_dataset, max_steps=2), run, progress=False)
    with pytest.raises(SonosynthError, match="config changed.*batch_size"):
        train(tiny_train_config(toy_dataset, max_steps=3, batch_size=3), run, resume=True, progress=False)
    # Training longer is allowed.
    assert train(tiny_train_config(toy_dataset, max_steps=3), run, resume=True, progress=False).step == 3


# ---- several processes -----------------------------------------------------------------------------

WORKER = """
import hashlib, os, sys
import torch
from sonosynth.diffusion.config import TrainConfig
from sonosynth.diffusion.train import train
from sonosynth.models.configs import ModelConfig

config = TrainConfig(dataset=sys.argv[1], split="all", model=ModelConfig(size="tiny"), size=32, batch_size=2,
                     max_steps=2, warmup_steps=1, checkpoint_every=2, sample_every=1000, sample_steps=2, num_samples=1)
result = train(config, sys.argv[2], progress=False)
digest = hashlib.sha256()
for name, tensor in sorted(result.model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().numpy().tobytes())
rank = int(os.environ["RANK"])
with open(os.path.join(sys.argv[3], f"rank{rank}.txt"), "w") as fh:
    fh.write(f"{int(os.environ['WORLD_SIZE'])} {digest.hexdigest()} {result.losses[-1]!r}")
"""


def test_two_processes_stay_in_sync(toy_dataset, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(WORKER))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(worker), str(toy_dataset), str(tmp_path / "run"), str(tmp_path)]
    # Own process group, so a hang (timeout) takes the workers down with the launcher.
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        _, stderr = launcher.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        pytest.fail("the 2-process run did not finish within 300 s")
    assert launcher.returncode == 0, stderr[-3000:]
    rank0 = (tmp_path / "rank0.txt").read_text().split()
    rank1 = (tmp_path / "rank1.txt").read_text().split()
    assert rank0[0] == rank1[0] == "2"
    assert rank0[1] == rank1[1], "parameters differ between ranks"
    assert rank0[2] == rank1[2]  # the logged loss is the mean over ranks
    checkpoint = ckpt.latest_checkpoint(tmp_path / "run")
    assert {p.name for p in checkpoint.glob("rng-rank*.safetensors")} == {"rng-rank0.safetensors",
                                                                          "rng-rank1.safetensors"}
    assert ckpt.read_state(checkpoint)["world_size"] == 2


def test_patch_training_samples_whole_images(toy_dataset, tmp_path):
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline

    seen = []
    config = tiny_train_config(toy_dataset, patch_size=16, max_steps=2)
    result = train(config, tmp_path / "run", progress=False, on_step=lambda step, loss: seen.append(step))
    assert seen == [1, 2]
    pipe = MaskToUltrasoundPipeline.from_pretrained(tmp_path / "run")
    assert pipe.unet.model_config.coord_channels
    assert TrainConfig.from_yaml(tmp_path / "run" / "config.yaml").model.coord_channels
    out = pipe(torch.zeros(1, 32, 32, dtype=torch.long), num_inference_steps=2, output_type="pt")
    assert out.images.shape == (1, 1, 32, 32) and result.step == 2


# ---- learning ---------------------------------------------------------------------------------------


def test_tiny_model_overfits_two_pairs(tmp_path):


    from sonosynth.data.format import Dataset
    from sonosynth.data.torch_dataset import LetterboxedPairs
    from sonosynth.diffusion.samples import sample_batch
    from sonosynth.models.denoiser import build_model

    dataset = write_toy_dataset(tmp_path / "two", n=2, seed=3)
    config = tiny_train_config(
        dataset, model=ModelConfig(size="tiny", kind="concat"), batch_size=4, max_steps=80, learning_rate=2e-3,
        warmup_steps=5, lr_schedule="constant", checkpoint_every=1000, ema_decay=0.9, sample_steps=10,
        guidance_scale=1.0, augment=AugmentConfig.preset("none"),
    )
    result = train(config, tmp_path / "run", progress=False)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-10:]) / 10
    assert last < 0.5 * first, f"loss {first:.3f} -> {last:.3f}"

    items = [LetterboxedPairs(Dataset.open(dataset), 32)[i] for i in range(2)]

    def mask_contrast(images) -> float:
        """Mean brightness inside the mask minus outside it (within the field of view), in [-1, 1] units."""
        values = [img[0][it["label"] == 1].mean() - img[0][(it["label"] == 0) & (it["fov"][0] > 0)].mean()
                  for img, it in zip(images, items, strict=True)]
        return float(sum(values) / len(values))

    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline

    trained = MaskToUltrasoundPipeline.from_pretrained(tmp_path / "run").unet
    torch.manual_seed(0)
    untrained = build_model(trained.model_config)
    real = mask_contrast([it["image"] for it in items])  # the toy ellipses are ~0.55 brighter
    c_trained = mask_contrast(sample_batch(trained, items, config, seed=0)[0])
    c_untrained = mask_contrast(sample_batch(untrained, items, config, seed=0)[0])
    assert c_trained > 0.5 * real and c_trained > c_untrained + 0.25, (c_trained, c_untrained, real)


# ---- command line -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_train_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from sonosynth.cli import app
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline

    try:
        from sonosynth.phantom.dataset import write_phantom_dataset

        dataset = write_phantom_dataset(tmp_path / "phantom", "fetal-head", n=3, size=48, seed=0)
    except ImportError:  # the phantom simulator is optional here


        dataset = write_toy_dataset(tmp_path / "phantom", n=3)
    (tmp_path / "train.yaml").write_text("batch_size: 2\nsample_every: 1\nsample_steps: 2\nnum_samples: 2\n"
                                         "warmup_steps: 1\ncheckpoint_every: 1\nkeep_checkpoints: 1\n")
    run = tmp_path / "run"
    runner = CliRunner()
    args = ["train", str(dataset), "--out", str(run), "--model", "tiny", "--size", "32", "--max-steps", "2",
            "--config", str(tmp_path / "train.yaml"), "--split", "all"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)

    saved = TrainConfig.from_yaml(run / "config.yaml")
    assert saved.model.size == "tiny" and saved.size == 32 and saved.batch_size == 2 and saved.max_steps == 2
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000001.png", "step-000002.png"]
    from PIL import Image

    grid = Image.open(run / "samples" / "step-000002.png")
    assert grid.size == (3 * 34, 2 * 34)  # mask | generated | real, two rows, 1-px frames

    pipe = MaskToUltrasoundPipeline.from_pretrained(run)
    out = pipe(torch.zeros(1, 32, 32, dtype=torch.long), num_inference_steps=2, output_type="pt")
    assert out.images.shape == (1, 1, 32, 32)

    # --resume alone continues with the saved settings; a conflicting flag is refused in one line.
    result = runner.invoke(app, ["train", str(dataset), "--out", str(run), "--resume", "--max-steps", "3"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [3]
    result = runner.invoke(app, ["train", str(dataset), "--out", str(run), "--resume", "--size", "64"])
    assert isinstance(result.exception, SonosynthError) and "size" in str(result.exception)


def test_cli_train_split_chooses_the_pairs(tmp_path):
    """`--split` as in sample and generate: auto trains on `train` when the dataset is split; another split or
    `all` (e.g. merged datasets whose phantom pairs have no split) is asked for by name."""
    from typer.testing import CliRunner

    from sonosynth.cli import app
    from sonosynth.data.format import Dataset, update_records

    dataset = write_toy_dataset(tmp_path / "toy", n=4)
    records = Dataset.open(dataset).records
    for record in records:
        record.split = "val"
    update_records(dataset, records)
    args = ["train", str(dataset), "--model", "tiny", "--size", "32", "--max-steps", "1", "--batch-size", "2"]
    runner = CliRunner()
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "auto")])
    assert isinstance(refused.exception, SonosynthError) and "no pairs to train on in split 'train'" in str(
        refused.exception)
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "val"), "--split", "val"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert TrainConfig.from_yaml(tmp_path / "val" / "config.yaml").split == "val"
