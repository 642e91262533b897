"""One CLI vocabulary: the same flag means the same thing in every command; old spellings still work, hidden."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from sonosynth.cli import app

TRAINING_COMMANDS = (["train"], ["segment", "train"], ["evaluate", "downstream"])


def help_of(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", TRAINING_COMMANDS, ids=" ".join)
def test_training_commands_share_their_words(command):
    text = help_of(*command)
    for flag in ("--max-steps", "--net-size", "--learning-rate", "--device"):
        assert flag in text, f"{' '.join(command)} lacks {flag}"
    for old in ("--steps ", "--lr ", "--model "):
        assert old not in text, f"{' '.join(command)} still shows {old.strip()}"


@pytest.mark.parametrize("command", [["segment", "train"], ["evaluate", "downstream"]], ids=" ".join)
def test_net_names_the_segmenter(command):
    text = help_of(*command)
    assert "--net " in text and "nnunet" in text


@pytest.mark.parametrize("command", [["sample"], ["generate"], ["edit"]], ids=" ".join)
def test_steps_means_denoising_steps(command):
    assert "Denoising steps" in help_of(*command)


def test_masks_is_no_longer_shown_for_datasets_or_mask_sources():
    assert "--masks" not in help_of("sample") and "--source" in help_of("sample")
    assert "--masks" not in help_of("generate") and "--mask-source" in help_of("generate")


def test_old_spellings_still_work(monkeypatch, tmp_path):
    import sonosynth.diffusion.train as diffusion_train
    import sonosynth.segmentation.train as segmentation_train

    seen = {}
    monkeypatch.setattr(segmentation_train, "train_from_folders",
                        lambda data, out, config, **kw: seen.setdefault("segment", config) and out)
    monkeypatch.setattr(diffusion_train, "train", lambda config, out, **kw: seen.setdefault("train", config)
                        and SimpleNamespace(step=0, seconds=0.0, model_dir=out))
    runner = CliRunner()
    old = runner.invoke(app, ["segment", "train", str(tmp_path), "--out", str(tmp_path / "s"), "--steps", "7",
                              "--net", "tiny"])
    assert old.exit_code == 0, old.output
    assert (seen["segment"].max_steps, seen["segment"].net, seen["segment"].net_size) == (7, "unet", "tiny")
    seen.clear()
    new = runner.invoke(app, ["segment", "train", str(tmp_path), "--out", str(tmp_path / "s"), "--max-steps", "9",
                              "--net-size", "base"])
    assert new.exit_code == 0, new.output
    assert (seen["segment"].max_steps, seen["segment"].net_size) == (9, "base")
    old = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--model", "tiny", "--lr", "0.01"])
    assert old.exit_code == 0, old.output
    assert (seen["train"].model.size, seen["train"].learning_rate) == ("tiny", 0.01)


def test_an_old_spelling_says_so_in_one_line(monkeypatch, tmp_path):
    import sonosynth.segmentation.train as segmentation_train

    seen = {}
    monkeypatch.setattr(segmentation_train, "train_from_folders",
                        lambda data, out, config, **kw: seen.update(kw) or out)
    runner = CliRunner()
    for flag in ("--synthetic", "--extra"):
        seen.clear()
        result = runner.invoke(app, ["segment", "train", str(tmp_path), "--out", str(tmp_path / "s"), flag,
                                     str(tmp_path / "synth")])
        assert result.exit_code == 0, result.output
        assert seen["synthetic_path"] == tmp_path / "synth"
        notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
        assert notes == ([] if flag == "--synthetic" else
                         ["note: --extra is the old spelling of --synthetic, which it will give way to in the next "
                          "release"])
    assert "--extra" not in help_of("segment", "train") and "--synthetic" in help_of("segment", "train")


def test_a_flat_recipe_of_the_previous_release_says_so_in_one_line(monkeypatch, tmp_path):
    """`--generator-per-k` with a recipe in 0.1's flat form: it still runs, with one note; the sectioned form none."""
    import sonosynth.evaluation.downstream as downstream

    seen = {}
    monkeypatch.setattr(downstream, "run_downstream", lambda real, out, config, **kw: seen.update(config=config) or out)
    flat, sections = tmp_path / "flat.yaml", tmp_path / "sections.yaml"
    flat.write_text("model_size: tiny\ntrain_steps: 3\nsample_steps: 2\n")
    sections.write_text("train: {model: {size: tiny}, max_steps: 3}\ngenerate: {steps: 2}\n")
    runner = CliRunner()
    recipes = []
    for recipe in (flat, sections):
        result = runner.invoke(app, ["evaluate", "downstream", "--real", str(tmp_path), "--out", str(tmp_path / "r"),
                                     "--generator-per-k", str(recipe)])
        assert result.exit_code == 0, result.output
        recipes.append(seen["config"].generator)
        notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
        assert len(notes) == (1 if recipe == flat else 0) and (not notes or str(flat) in notes[0]), notes
    assert recipes[0] == recipes[1]  # the same recipe in either form
