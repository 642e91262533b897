"""`sonosynth evaluate downstream|quality` from the command line: files, resume, one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from factories import write_toy_dataset
from typer.testing import CliRunner

from sonosynth.cli import app

TINY = ["--size", "32", "--net", "tiny", "--steps", "4", "--val-every", "2", "--batch-size", "4"]


def test_help_lists_the_groups() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "segment" in result.output and "evaluate" in result.output
    result = CliRunner().invoke(app, ["evaluate", "--help"])
    assert "downstream" in result.output and "quality" in result.output


def test_downstream_command_writes_and_resumes(tmp_path: Path) -> None:
    real = write_toy_dataset(tmp_path / "real", n=12, seed=5)
    synth = write_toy_dataset(tmp_path / "synth", n=4, seed=6, prefix="synth")
    out = tmp_path / "report"
    args = ["evaluate", "downstream", "--auto-split",
         "--real", str(real), "--synthetic", str(synth), "--k", "1,all",
            "--seeds", "1", "--arms", "real,real+synthetic", *TINY, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("results.csv", "results.md", "dice_vs_k.png", "report.html", "settings.json"):
        assert (out / name).is_file(), name
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["k"], r["arm"]) for r in rows] == [("1", "real"), ("1", "real+synthetic"),
                                                  ("all", "real"), ("all", "real+synthetic")]
    cell = out / "cells" / "kall__real__seed0.json"
    assert json.loads(cell.read_text())["n_real_subjects"] == 4  # 6 subjects: 1 val, 1 test, 4 train
    stamp = cell.stat().st_mtime_ns
    assert "--k 1,all" in (out / "results.md").read_text()

    result = CliRunner().invoke(app, args)  # resume: everything done, nothing retrained
    assert result.exit_code == 0, result.output
    assert cell.stat().st_mtime_ns == stamp


def test_quality_command(tmp_path: Path) -> None:
    real = write_toy_dataset(tmp_path / "real", n=8, seed=7)
    synth = write_toy_dataset(tmp_path / "synth", n=4, seed=8, prefix="synth")
    out = tmp_path / "quality"
    result = CliRunner().invoke(app, ["evaluate", "quality", "--real", str(real), "--synthetic", str(synth),
                                      "--size", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "quality.json").read_text())["n_synthetic"] == 4
    result = CliRunner().invoke(app, ["evaluate", "quality", "--real", str(real), "--synthetic", str(synth),
                                      "--size", "32", "--out", str(out)])
    assert result.exit_code != 0  # an existing report is not overwritten without --overwrite


def test_bad_input_is_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    proc = subprocess.run(
        [sys.executable, "-m", "sonosynth", "evaluate", "downstream", "--auto-split", "--real", str(missing), "--out",
         str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {missing}: dataset folder not found"


@pytest.mark.slow
def test_generator_per_k_on_phantom_heads(tmp_path: Path) -> None:
    """The honest protocol from the command line on phantom fetal heads, tiny models, all five arms."""
    from sonosynth.data.splits import SplitConfig, split_dataset
    from sonosynth.phantom.dataset import write_phantom_dataset

    real = write_phantom_dataset(tmp_path / "phantom", "fetal-head", 12, "48x32", seed=0)
    split_dataset(real, SplitConfig(val=0.2, test=0.3, seed=0))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train: {model: {size: tiny}, size: 32, max_steps: 3, batch_size: 4}\n"
                      "mask_sources: {deform: 2, shape: 2}\ngenerate: {steps: 2}\n")
    out = tmp_path / "report"
    args = ["evaluate", "downstream", "--auto-split",
         "--real", str(real), "--generator-per-k", str(recipe), "--k", "2",
            "--seeds", "1", *TINY, "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    arms = {json.loads(p.read_text())["arm"] for p in (out / "cells").glob("*.json")}
    assert arms == {"real", "real+classical", "real+synthetic", "real+synthetic+classical", "synthetic"}
    report = (out / "results.md").read_text()
    assert "generator per k" in report and "--generator-per-k" in report and "HC abs. error (mm)" in report
    assert "| 2 | real+synthetic+classical | real+classical |" in report
    assert (out / "generators" / "k2__seed0" / "run" / "model" / "model_index.json").is_file()

    (out / "cells" / "k2__synthetic__seed0.json").unlink()  # --report-only trains nothing, says it is partial
    result = CliRunner().invoke(app, [*args, "--report-only"])
    assert result.exit_code == 0, result.output
    assert not (out / "cells" / "k2__synthetic__seed0.json").exists()
    report = (out / "results.md").read_text()
    assert "4 of the 5 planned cells" in report and "--report-only" not in report


def test_bad_generator_recipe_is_one_line_error(tmp_path: Path) -> None:
    real = write_toy_dataset(tmp_path / "real", n=12, seed=5)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_size: tiny\nsteps_typo: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sonosynth", "evaluate", "downstream", "--auto-split",
         "--real", str(real), "--generator-per-k",
         str(recipe), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {recipe}: unknown generator recipe fields ['steps_typo']"
    assert not (tmp_path / "r").exists()


def test_train_where_reaches_the_experiment_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    real = write_toy_dataset(tmp_path / "real", n=12, seed=5)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", "downstream", "--auto-split",
         "--real", str(real), "--k", "2", "--seeds", "1",
                                      "--arms", "real", "--train-where", "view=b", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "cells" / "k2__real__seed0.json").read_text())["n_real_images"] == 2
    assert "--train-where view=b" in (out / "results.md").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "sonosynth", "evaluate", "downstream", "--auto-split",
         "--real", str(real), "--arms", "real",
         "--train-where", "hc_mm<tiny", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: condition 'hc_mm<tiny': < needs a number, got 'tiny'"
    assert not (tmp_path / "r").exists()


def test_only_seeds_runs_those_seeds_and_the_report_covers_every_finished_cell(tmp_path: Path) -> None:
    real = write_toy_dataset(tmp_path / "real", n=12, seed=5)
    out = tmp_path / "report"
    args = ["evaluate", "downstream", "--auto-split",
         "--real", str(real), "--k", "2", "--seeds", "4", "--arms", "real", *TINY,
            "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--only-seeds", "3"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "cells").glob("*.json")) == ["k2__real__seed3.json"]
    report = (out / "results.md").read_text()
    assert "1 of the 4 planned cells" in report and "--only-seeds" not in report and "--seeds 4" in report
    result = CliRunner().invoke(app, [*args, "--only-seeds", "0,1,2"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "cells").glob("*.json"))) == 4 and "planned cells" not in (out / "results.md").read_text()
    for bad, says in (("4", "--only-seeds 4: the plan has seeds 0..3"), ("x", "--only-seeds x: expected")):
        result = CliRunner().invoke(app, [*args, "--only-seeds", bad])
        assert result.exit_code == 1 and says in str(result.exception), result.output
