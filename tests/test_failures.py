"""What survives a failure: errors and Ctrl-C, non-finite losses, SIGKILL mid-write, a full disk.

The guarantees of docs/reliability.md: a training that fails before its first checkpoint leaves
nothing; one that fails later keeps a resumable run and says so; a run killed while writing a
checkpoint resumes from the last complete one to the same weights as an uninterrupted run; a killed
generation leaves no output and the same command then writes what an uninterrupted one writes; a
write that fails (disk full, file-size limit) is one line naming the file, with nothing half-written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from factories import Killed, kill_at, save_tiny_run, tiny_train_config, write_toy_dataset
from safetensors.torch import load_file
from typer.testing import CliRunner

from sonosynth.cli import app
from sonosynth.diffusion.train import train
from sonosynth.errors import SonosynthError
from sonosynth.training import checkpoints as ckpt

REPO = Path(__file__).resolve().parents[1]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next((folder / "model" / "unet").glob("*.safetensors"))))


def run_sonosynth(args: list[str], before: str = "", limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    """`sonosynth ARGS` in a fresh process, after `before` (Python run first: patches that kill it), optionally
    under a file-size limit (writes past it fail with EFBIG, as on a full disk)."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        limit = {limit_bytes!r}
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        {textwrap.indent(textwrap.dedent(before), '        ').strip()}
        from sonosynth.cli import main
        sys.argv = ["sonosynth", *{args!r}]
        main()
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)


# ---- errors, Ctrl-C and non-finite losses ----------------------------------------------------------------


def test_a_training_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy")
    config = tiny_train_config(data, checkpoint_every=100)
    with pytest.raises(Killed):
        train(config, tmp_path / "run", on_step=kill_at(2), progress=False)
    assert not (tmp_path / "run").exists()
    # A folder the user made stays, with what they put there, and nothing else.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "mine", on_step=lambda step, loss: (_ for _ in ()).throw(KeyboardInterrupt),
              progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_non_finite_loss_stops_with_the_last_good_checkpoint_and_resumes(tmp_path: Path, monkeypatch) -> None:
    data = write_toy_dataset(tmp_path / "toy")
    config = tiny_train_config(data, max_steps=6)
    straight = train(config, tmp_path / "straight", progress=False)

    import torch.nn.functional as F

    mse, calls = F.mse_loss, []

    def nan_at_step_3(*args, **kwargs):
        calls.append(1)
        loss = mse(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(F, "mse_loss", nan_at_step_3)
    with pytest.raises(SonosynthError, match=r"the loss became nan at step 3.*keeps checkpoint step-000002: "
                                             r"continue with --resume"):
        train(config, tmp_path / "run", progress=False)
    monkeypatch.setattr(F, "mse_loss", mse)
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path / "run")] == [2]
    assert not (tmp_path / "run" / "model").exists()  # no NaN weights were written anywhere
    for path in (tmp_path / "run" / "checkpoints" / "step-000002").glob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(path)).values() if t.is_floating_point())
    resumed = train(config, tmp_path / "run", resume=True, progress=False)
    assert resumed.step == 6
    assert all(torch.equal(a, b) for a, b in zip(weights(tmp_path / "straight").values(),
                                                 weights(tmp_path / "run").values(), strict=True))
    assert straight.step == 6

    # Non-finite before any checkpoint: nothing is kept.
    calls.clear()
    monkeypatch.setattr(F, "mse_loss", nan_at_step_3)
    with pytest.raises(SonosynthError, match=r"nothing was kept in .*run2 \(no checkpoint yet\)"):
        train(tiny_train_config(data, checkpoint_every=100), tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()


# ---- SIGKILL ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy")
    config_file = tmp_path / "config.yaml"
    tiny_train_config(data, max_steps=6).save(config_file)
    args = ["train", str(data), "--config", str(config_file), "--device", "cpu"]
    assert CliRunner().invoke(app, [*args, "--out", str(tmp_path / "straight")]).exit_code == 0

    # SIGKILL once the step-4 checkpoint's weights are on disk but before its state.json: mid-write.
    die = """
        import os, signal
        from sonosynth.training import checkpoints
        finish = checkpoints.finish_checkpoint
        def finish_or_die(tmp, state, keep):
            if state["step"] == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return finish(tmp, state, keep)
        checkpoints.finish_checkpoint = finish_or_die
    """
    killed = run_sonosynth([*args, "--out", str(tmp_path / "run")], before=die)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "step-000004.tmp").is_dir()  # the half-written one
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-000002"  # never picked up

    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert isinstance(refused.exception, SonosynthError) and "--resume" in str(refused.exception)
    resumed = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert not (tmp_path / "run" / "checkpoints" / "step-000004.tmp").exists()
    straight, again = weights(tmp_path / "straight"), weights(tmp_path / "run")
    assert straight.keys() == again.keys() and all(torch.equal(straight[k], again[k]) for k in straight)


@pytest.mark.slow
def test_killed_generation_leaves_no_output_and_the_rerun_writes_the_same(tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy", n=6)
    run = save_tiny_run(tmp_path / "run")
    args = ["generate", str(run), "--source", str(data), "--n", "5", "--steps", "2", "--batch-size", "1",
            "--seed", "3", "--device", "cpu"]
    assert CliRunner().invoke(app, [*args, "--out", str(tmp_path / "straight")]).exit_code == 0

    die = """
        import os, signal
        from sonosynth.data import format
        add, count = format.DatasetWriter.add, []
        def add_or_die(self, *args, **kwargs):
            count.append(1)
            if len(count) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return add(self, *args, **kwargs)
        format.DatasetWriter.add = add_or_die
    """
    out = tmp_path / "out"
    killed = run_sonosynth([*args, "--out", str(out)], before=die)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists()  # only a temporary folder beside it, never the output
    again = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert (out / "manifest.csv").read_text() == (tmp_path / "straight" / "manifest.csv").read_text()
    for image in (tmp_path / "straight" / "images").iterdir():
        assert (out / "images" / image.name).read_bytes() == image.read_bytes()


# ---- a full disk --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["phantom", "train"])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing(tmp_path: Path, command: str) -> None:
    out = tmp_path / "out"
    if command == "phantom":
        args, limit = ["data", "phantom", str(out), "--n", "6", "--size", "64"], 3000
    else:
        data = write_toy_dataset(tmp_path / "toy")
        config_file = tmp_path / "config.yaml"
        tiny_train_config(data, max_steps=2, checkpoint_every=1).save(config_file)
        args, limit = ["train", str(data), "--config", str(config_file), "--device", "cpu", "--out", str(out)], 30_000
    result = run_sonosynth(args, limit_bytes=limit)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "cannot write (" in errors[0] and "File too large" in errors[0] and str(out) in errors[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == []


@pytest.mark.parametrize("command", ["data export", "data merge", "data split"])
def test_a_full_disk_names_the_final_file_and_leaves_the_input_whole(tmp_path: Path, command: str) -> None:
    """Each file over 1500 bytes fails: the error names the file the user would have got (not a temporary),
    the output is absent and the input (for `data split`, rewritten in place) byte-identical."""
    data = write_toy_dataset(tmp_path / "toy", n=8)
    other = write_toy_dataset(tmp_path / "other", n=2, seed=1, prefix="other")
    (other / "dataset.json").write_text((other / "dataset.json").read_text().replace('"toy"', '"other"'))
    before = {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}
    out = tmp_path / "out"
    args = {"data export": ["data", "export", "nnunet", str(data), str(out), "--id", "5"],
            "data merge": ["data", "merge", str(data), str(other), "--out", str(out)],
            "data split": ["data", "split", str(data), "--val", "0.25", "--test", "0.25"]}[command]
    limit = 1500 if command != "data split" else len((data / "manifest.csv").read_bytes())
    result = run_sonosynth(args, limit_bytes=limit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "cannot write (" in errors[0] and ".tmp-" not in errors[0] and ".part" not in errors[0], errors[0]
    assert str(out if command != "data split" else data / "manifest.csv") in errors[0], errors[0]
    assert not out.exists() or not any(out.iterdir())
    assert {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()} == before


def test_two_writers_of_one_file_do_not_share_a_temporary_file(tmp_path: Path) -> None:
    """Two processes writing the same report (one per k) each write their own temporary file."""
    from sonosynth.files import atomic_path

    target = tmp_path / "dice_vs_k.png"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.suffix == second.suffix == ".png"
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    assert target.read_bytes() == b"first"  # the outer writer finished last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dice_vs_k.png"]
