"""Scans without masks in generator training: they train the null-condition branch only, in a fixed share of each
batch, from their own resumable stream; bad folders are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factories import Killed, kill_at, tiny_train_config
from safetensors.torch import load_file

import sonosynth.diffusion.train as diffusion_train
from sonosynth.data.imageio import write_png
from sonosynth.diffusion.train import train
from sonosynth.errors import SonosynthError
from sonosynth.training import checkpoints as ckpt
from sonosynth.training.stream import MixedBatchSampler, StreamBatchSampler


def write_scans(folder, n=3, seed=1):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        image = np.zeros((40, 56), np.uint8)
        image[4:36, 6:50] = rng.integers(30, 200, (32, 44))
        write_png(folder / f"scan_{i}.png", image)
    return folder


def test_mixed_stream_holds_both_sources_in_every_batch_and_resumes():
    def mixed(start=0):
        return MixedBatchSampler(StreamBatchSampler(4, 3, 7, start=start), StreamBatchSampler(5, 2, 8, start=start),
                                 offset=4)

    full = mixed()
    batches = [full.batch(i) for i in range(6)]
    assert all(len(b) == 5 and all(i < 4 for i, _ in b[:3]) and all(4 <= i < 9 for i, _ in b[3:]) for b in batches)
    assert {i for b in batches for i, _ in b[3:]} == set(range(4, 9))  # every scan is reached
    resumed = iter(mixed(start=4))
    assert [next(resumed), next(resumed)] == batches[4:6]


def test_unannotated_rows_always_get_the_null_condition(toy_dataset, tmp_path, monkeypatch):
    seen = []
    original = diffusion_train.drop_conditions

    def spy(model, condition, class_labels, drop_prob, generator=None, unannotated=None):
        out = original(model, condition, class_labels, drop_prob, generator=generator, unannotated=unannotated)
        seen.append((unannotated, condition, out[0], model.model_config.num_labels))
        return out

    monkeypatch.setattr(diffusion_train, "drop_conditions", spy)
    config = tiny_train_config(toy_dataset, max_steps=3, batch_size=4, cond_drop_prob=0.0,
                               unannotated=str(write_scans(tmp_path / "scans")), unannotated_fraction=0.5)
    train(config, tmp_path / "run", progress=False)
    assert len(seen) == 3
    for rows, before, after, labels in seen:
        assert rows is not None and rows.tolist() == [False, False, True, True]
        assert torch.equal(after[~rows], before[~rows])  # no dropping for the pairs here (cond_drop_prob 0)
        assert not after[rows, :labels].any()  # the scans: mask channels null
        assert torch.equal(after[rows, labels:], before[rows, labels:])  # the field of view is kept


def test_a_run_with_scans_resumes_exactly_and_refuses_other_scans(toy_dataset, tmp_path):
    scans = write_scans(tmp_path / "scans")
    config = tiny_train_config(toy_dataset, max_steps=4, batch_size=3, unannotated=str(scans))
    straight = train(config, tmp_path / "straight", progress=False)
    with pytest.raises(Killed):
        train(config, tmp_path / "killed", on_step=kill_at(3), progress=False)
    resumed = train(config, tmp_path / "killed", resume=True, progress=False)
    assert resumed.losses == straight.losses[2:]
    a = load_file(tmp_path / "straight" / "checkpoints" / "step-000004" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoints" / "step-000004" / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)

    write_png(scans / "scan_9.png", np.full((40, 56), 90, np.uint8))
    with pytest.raises(SonosynthError, match="unannotated scans of .*scans changed"):
        train(config, tmp_path / "killed", resume=True, progress=False)
    assert ckpt.latest_checkpoint(tmp_path / "killed").name == "step-000004"


def test_scans_are_refused_in_one_line_before_any_output(toy_dataset, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    cases = [
        (tiny_train_config(toy_dataset, unannotated=str(tmp_path / "missing")), "no such folder"),
        (tiny_train_config(toy_dataset, unannotated=str(empty)), "no images of unannotated scans"),
        (tiny_train_config(toy_dataset, unannotated=str(bad)), "broken.png"),
    ]
    joint = tiny_train_config(toy_dataset, unannotated=str(write_scans(tmp_path / "scans")))
    joint.model.kind = "joint"
    cases.append((joint, "joint model"))
    for i, (config, message) in enumerate(cases):
        with pytest.raises(SonosynthError, match=message) as info:
            train(config, tmp_path / f"run{i}", progress=False)
        assert "\n" not in str(info.value)
        assert not (tmp_path / f"run{i}").exists()
    with pytest.raises(SonosynthError, match="batch_size of at least 2"):
        tiny_train_config(toy_dataset, unannotated=str(empty), batch_size=1)
