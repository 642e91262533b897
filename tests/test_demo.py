"""`sonosynth demo --fast` end to end, and its resume behaviour."""

import json
from pathlib import Path

from typer.testing import CliRunner

from sonosynth.cli import app
from sonosynth.data.format import Dataset


def test_demo_fast_end_to_end_then_resumes(tmp_path: Path):
    out = tmp_path / "demo"
    runner = CliRunner()
    first = runner.invoke(app, ["demo", "--fast", "--out", str(out), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert "Dice" in first.output and "HC" in first.output
    for stage in ("phantom", "train", "generate", "evaluate"):
        assert f"stage {stage}: done" in first.output

    real, synthetic = Dataset.open(out / "data"), Dataset.open(out / "synthetic")
    assert {r.split for r in real.records} == {"train", "val", "test"}
    assert len(synthetic) == 16
    assert {r.extra["mask_source"] for r in synthetic.records} == {"deform", "shape"}
    assert (out / "model-run" / "model" / "model_index.json").is_file()
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
