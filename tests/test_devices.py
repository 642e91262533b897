"""`--device`: one resolver, and every command that runs a network honours it (or says clearly why not)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sonosynth.cli import main
from sonosynth.devices import resolve_device
from sonosynth.errors import SonosynthError

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given when there is no GPU")


def test_auto_picks_cuda_only_when_there_is_one():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_unknown_device_names_the_choices():
    with pytest.raises(SonosynthError, match="auto, cpu or cuda, got 'tpu'"):
        resolve_device("tpu")


@no_gpu
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(SonosynthError, match="no CUDA GPU"):
        resolve_device("cuda")


def _commands(data: Path, out: Path) -> dict[str, list[str]]:
    run, segrun = str(out / "no-run"), str(out / "no-segrun")
    png = str(data / "images" / "toy_000.png")
    mask = str(data / "masks" / "toy_000.png")
    return {
        "train": ["train", str(data), "--out", str(out / "o"), "--model", "tiny", "--max-steps", "1",
                  "--split", "all"],
        "sample": ["sample", run, "--masks", str(data), "--out", str(out / "o")],
        "generate": ["generate", run, "--source", str(data), "--n", "1", "--out", str(out / "o")],
        "edit": ["edit", run, "--image", png, "--mask", mask, "--edited-mask", mask, "--out", str(out / "o")],
        "segment train": ["segment", "train", str(data), "--out", str(out / "o"), "--net", "tiny", "--steps", "1"],
        "segment predict": ["segment", "predict", segrun, str(data), "--out", str(out / "o")],
        "evaluate downstream": ["evaluate", "downstream", "--real", str(data), "--out", str(out / "o"), "--k", "1",
                                "--net", "tiny", "--steps", "1"],
        "evaluate quality": ["evaluate", "quality", "--real", str(data), "--synthetic", str(data),
                             "--out", str(out / "o")],
        "demo": ["demo", "--fast", "--out", str(out / "o")],
    }


@no_gpu
@pytest.mark.parametrize("command", list(_commands(Path("d"), Path("o"))))
def test_every_network_command_takes_device_and_fails_cleanly_without_a_gpu(
    command: str, toy_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """Fails before any work: one `error:` line, exit 1, nothing written (and no typer 'no such option')."""
    monkeypatch.setattr(sys, "argv", ["sonosynth", *_commands(toy_dataset, tmp_path)[command], "--device", "cuda"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: --device cuda: no CUDA GPU is available"
    ], err
    assert not (tmp_path / "o").exists()
