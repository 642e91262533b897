"""`sonosynth demo --fast` end to end, interrupted (Ctrl-C) and resumed."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sonosynth.cli import app, main
from sonosynth.data.format import Dataset

FAST_DEFORM_PAIRS = 8  # `demo --fast` writes 8 deform pairs, then the shape pairs


def interrupt_second_generate_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the second synthetic part (shape masks) is being written: at its first generated pair."""
    import sonosynth.synthesis.generate as generate

    calls = []
    real_at_output_size = generate._at_output_size

    def at_output_size(*args, **kwargs):
        calls.append(1)
        if len(calls) == FAST_DEFORM_PAIRS + 1:
            raise KeyboardInterrupt
        return real_at_output_size(*args, **kwargs)

    monkeypatch.setattr(generate, "_at_output_size", at_output_size)


@pytest.mark.slow
def test_demo_fast_end_to_end_survives_ctrl_c_then_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture):
    out = tmp_path / "demo"
    with monkeypatch.context() as patch:
        interrupt_second_generate_batch(patch)
        patch.setattr(sys, "argv", ["sonosynth", "demo", "--fast", "--out", str(out), "--device", "cpu"])
        with pytest.raises(SystemExit) as exit_info:
            main()
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted: nothing half-written" in err, err[-600:]
    # The model and the finished deform part stay; the interrupted part left nothing behind.
    assert (out / "model-run" / "model" / "model_index.json").is_file()
    assert len(Dataset.open(out / "synthetic-deform")) == FAST_DEFORM_PAIRS
    assert not (out / "synthetic-shape").exists() and not (out / "synthetic").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]

    runner = CliRunner()
    first = runner.invoke(app, ["demo", "--fast", "--out", str(out), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert "Dice" in first.output and "HC" in first.output
    for stage in ("phantom", "train", "generate", "evaluate"):
        assert f"stage {stage}: done" in first.output
    assert json.loads((out / "demo-timings.json").read_text())["timings"]["train"] < 5  # resumed, not retrained

    real, synthetic = Dataset.open(out / "data"), Dataset.open(out / "synthetic")
    assert {r.split for r in real.records} == {"train", "val", "test"}
    assert len(synthetic) == 16
    assert {r.extra["mask_source"] for r in synthetic.records} == {"deform", "shape"}
    report = out / "report"
    for name in ("results.csv", "results.md", "report.html"):
        assert (report / name).is_file(), name
    cells = sorted((report / "cells").glob("*.json"))
    assert sorted(json.loads(c.read_text())["arm"] for c in cells) == ["real", "real+synthetic"]

    # Every stage is complete, so a second run recomputes nothing and leaves the results as they were.
    before = (report / "results.csv").read_text()
    second = runner.invoke(app, ["demo", "--fast", "--out", str(out), "--device", "cpu"])
    assert second.exit_code == 0, second.output
    timings = json.loads((out / "demo-timings.json").read_text())["timings"]
    assert timings["train"] < 5 and timings["generate"] < 5
    assert (report / "results.csv").read_text() == before


def test_demo_rejects_unknown_device(tmp_path: Path):
    result = CliRunner().invoke(app, ["demo", "--fast", "--out", str(tmp_path / "d"), "--device", "tpu"])
    assert result.exit_code != 0


@pytest.mark.slow
def test_latent_demo_trains_an_autoencoder_and_generates_at_twice_the_side(tmp_path: Path):
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline

    out, runner = tmp_path / "demo", CliRunner()
    first = runner.invoke(app, ["demo", "--fast", "--latent", "--out", str(out), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    for stage in ("phantom", "autoencoder", "train", "generate", "evaluate"):
        assert f"stage {stage}: done" in first.output
    assert (out / "autoencoder" / "samples").is_dir() and "Autoencoder:" in first.output
    assert (out / "autoencoder-patches" / "model").is_dir()  # patches first, then the decoder on whole images
    pipe = MaskToUltrasoundPipeline.from_pretrained(out / "model-run")
    assert pipe.vae is not None and pipe.config.sample_size == 64  # twice the fast demo's 32 px
    # 64 px squares, written back at the phantom's 3:2 aspect
    assert {sample.image.shape for sample in Dataset.open(out / "synthetic")} == {(43, 64)}
    assert (out / "report" / "results.md").is_file()
    again = runner.invoke(app, ["demo", "--fast", "--latent", "--out", str(out), "--device", "cpu"])
    timings = json.loads((out / "demo-timings.json").read_text())["timings"]
    assert again.exit_code == 0 and timings["autoencoder"] < 5 and timings["train"] < 5  # resumed, not retrained
