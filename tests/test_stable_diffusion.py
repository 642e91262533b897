"""Stable Diffusion from a local folder (`sonosynth train --base`): ControlNet, LoRA and joint runs on a tiny random
SD built here, trained for a few steps, reloaded with one call, and used by generate / edit like any run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import (
    Killed,
    kill_at,
    tiny_stable_diffusion_config,
    write_tiny_stable_diffusion,
    write_toy_dataset,
)

from sonosynth.cli import main
from sonosynth.data.format import Dataset
from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
from sonosynth.errors import SonosynthError
from sonosynth.stable_diffusion.base import base_fingerprint, check_base
from sonosynth.stable_diffusion.pipeline import PromptedMaskPipeline, gray_to_mask, mask_to_gray
from sonosynth.stable_diffusion.prompts import build_prompt, prompt_attributes
from sonosynth.stable_diffusion.train import train_stable_diffusion

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def sd_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "sd15")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "toy")


@pytest.fixture(scope="module")
def controlnet_run(tmp_path_factory: pytest.TempPathFactory, sd_base: Path, toy: Path) -> Path:
    """A ControlNet trained long enough (lr 1e-2) for the mask to visibly reach the images."""
    run = tmp_path_factory.mktemp("runs") / "controlnet"
    train_stable_diffusion(tiny_stable_diffusion_config(toy, sd_base, max_steps=12, learning_rate=1e-2), run,
                           progress=False, device="cpu")
    return run


def square_mask(top: int, size: int = 32) -> torch.Tensor:
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[:, top : top + 10, 8:24] = 1
    return labels


def generate(pipe, labels, seed: int = 0, **kwargs) -> np.ndarray:
    return pipe(labels=labels, num_inference_steps=3, generator=[torch.Generator().manual_seed(seed)],
                **kwargs).images[0]


# ---- prompts ------------------------------------------------------------------------------------------


def test_prompts_leave_out_clauses_without_values():
    template = "ultrasound image of the {organ}, {pathology}"
    assert build_prompt(template, {"organ": "breast", "pathology": "malignant"}) == \
        "ultrasound image of the breast, malignant"
    assert build_prompt(template, {"organ": "breast", "pathology": ""}) == "ultrasound image of the breast"
    assert build_prompt("{view} view of the {organ}, phase {phase}, echo", {"organ": "heart", "view": "2CH"}) == \
        "2CH view of the heart, echo"
    assert prompt_attributes(template, {"pathology": ["benign"], "view": ["a"]}) == ["pathology"]
    with pytest.raises(SonosynthError, match="fields must be attribute names"):
        prompt_attributes("image of {0}", {})


def test_importers_record_the_organ(toy: Path, tmp_path: Path):
    from factories import write_busi

    from sonosynth.data.importers.busi import import_busi

    write_busi(tmp_path / "busi")
    assert Dataset.open(import_busi(tmp_path / "busi", tmp_path / "out").out).info.organ == "breast"


def test_grey_mask_round_trip():
    labels = torch.tensor([[[0, 1, 2, 3]]])
    assert torch.equal(gray_to_mask(mask_to_gray(labels, 4) + 0.1, 4), labels)


# ---- the base folder ------------------------------------------------------------------------------------


def test_an_incomplete_base_is_named(sd_base: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(sd_base, broken)
    (broken / "unet" / "config.json").unlink()
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(SonosynthError, match=r"missing unet/config.json, tokenizer/vocab.json"):
        check_base(broken)
    with pytest.raises(SonosynthError, match="not found"):
        check_base(tmp_path / "nowhere")


def test_sd2_layout_trains_on_velocity(tmp_path: Path, toy: Path):
    base = write_tiny_stable_diffusion(tmp_path / "sd2", prediction_type="v_prediction")
    result = train_stable_diffusion(tiny_stable_diffusion_config(toy, base, max_steps=2), tmp_path / "run",
                                    progress=False, device="cpu")
    assert result.step == 2 and all(np.isfinite(result.losses))
    assert MaskToUltrasoundPipeline.from_pretrained(tmp_path / "run").scheduler.config.prediction_type == "v_prediction"


# ---- ControlNet ------------------------------------------------------------------------------------------


def test_controlnet_run_holds_only_what_it_trained(controlnet_run: Path, sd_base: Path):
    model = controlnet_run / "model"
    assert sorted(p.name for p in model.iterdir()) == ["base.json", "controlnet"]
    assert not list(model.rglob("*.bin")) and list((model / "controlnet").glob("*.safetensors"))
    saved = json.loads((model / "base.json").read_text())
    assert saved["base"] == str(sd_base.resolve()) and saved["base_hash"] == base_fingerprint(sd_base)
    assert saved["class_values"] == [["view", ["a", "b"]]] and saved["organ"] == "toy"
    assert sorted(p.name for p in (controlnet_run / "samples").iterdir()) == ["step-000012.png"]


def test_the_mask_reaches_the_image_through_the_controlnet(controlnet_run: Path):
    pipe = MaskToUltrasoundPipeline.from_pretrained(controlnet_run)  # one call, sonosynth's own loader
    assert isinstance(pipe, PromptedMaskPipeline) and pipe.kind == "controlnet"
    upper, lower = square_mask(2), square_mask(20)
    a, b = generate(pipe, upper), generate(pipe, lower)
    assert a.shape == (32, 32) and np.isfinite(a).all()
    changed = (upper != lower)[0].numpy()
    difference = np.abs(a - b)
    assert difference[changed].mean() > 1e-3
    assert difference[changed].mean() > difference[~changed].mean()  # most where the mask changed
    np.testing.assert_allclose(generate(pipe, upper), a, atol=1e-6)  # same seed, same image
    pipe.conditioning_scale = 0.0  # no ControlNet residuals: the mask no longer matters
    np.testing.assert_allclose(generate(pipe, upper), generate(pipe, lower), atol=1e-6)


def test_prompts_and_attributes_steer_generation(controlnet_run: Path):
    pipe = MaskToUltrasoundPipeline.from_pretrained(controlnet_run)
    labels = square_mask(8)
    assert pipe.prompts(torch.tensor([[1], [-1]]), 2) == ["ultrasound image of the toy, view b",
                                                          "ultrasound image of the toy"]
    view_a = generate(pipe, labels, class_labels=torch.tensor([[0]]))
    view_b = generate(pipe, labels, class_labels=torch.tensor([[1]]))
    assert np.abs(view_a - view_b).max() > 1e-4
    np.testing.assert_allclose(generate(pipe, labels, prompt="ultrasound image of the toy, view a"), view_a,
                               atol=1e-6)
    guided = generate(pipe, labels, prompt="something else", guidance_scale=7.0)
    assert np.abs(guided - view_a).max() > 1e-4


def test_the_run_is_refused_on_another_base(controlnet_run: Path, tmp_path: Path):
    other = write_tiny_stable_diffusion(tmp_path / "other", prediction_type="v_prediction")
    with pytest.raises(SonosynthError, match="different Stable Diffusion base"):
        PromptedMaskPipeline.from_pretrained(controlnet_run, base=other)
    moved = tmp_path / "run"
    shutil.copytree(controlnet_run, moved)
    saved = json.loads((moved / "model" / "base.json").read_text())
    (moved / "model" / "base.json").write_text(json.dumps({**saved, "base": str(tmp_path / "gone")}))
    with pytest.raises(SonosynthError, match="not there any more; load with base="):
        MaskToUltrasoundPipeline.from_pretrained(moved)
    assert MaskToUltrasoundPipeline.from_pretrained(moved, base=saved["base"]).kind == "controlnet"


def test_diffusers_own_pipeline_runs_on_the_trained_parts(controlnet_run: Path):
    from diffusers import StableDiffusionControlNetPipeline

    from sonosynth.stable_diffusion.pipeline import control_image

    sd = MaskToUltrasoundPipeline.from_pretrained(controlnet_run).to_diffusers()
    assert isinstance(sd, StableDiffusionControlNetPipeline)
    sd.set_progress_bar_config(disable=True)
    image = control_image(square_mask(8), None, 2)
    out = sd("ultrasound image of the toy", image=image, height=32, width=32, num_inference_steps=2,
             output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 32, 32, 3)


def test_resume_continues_exactly(tmp_path: Path, sd_base: Path, toy: Path):
    config = tiny_stable_diffusion_config(toy, sd_base, lora_rank=2)
    straight = train_stable_diffusion(config, tmp_path / "straight", progress=False, device="cpu")
    with pytest.raises(Killed):
        train_stable_diffusion(config, tmp_path / "resumed", on_step=kill_at(3), progress=False, device="cpu")
    resumed = train_stable_diffusion(config, tmp_path / "resumed", resume=True, progress=False, device="cpu")
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-5)
    for name in ("controlnet/diffusion_pytorch_model.safetensors", "pytorch_lora_weights.safetensors"):
        from safetensors.torch import load_file

        a, b = load_file(tmp_path / "straight" / "model" / name), load_file(tmp_path / "resumed" / "model" / name)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# ---- LoRA and joint ------------------------------------------------------------------------------------


def test_lora_changes_the_base_and_reloads(tmp_path: Path, sd_base: Path, toy: Path):
    run = tmp_path / "lora"
    train_stable_diffusion(tiny_stable_diffusion_config(toy, sd_base, kind="lora", learning_rate=1e-2), run,
                           progress=False, device="cpu")
    assert sorted(p.name for p in (run / "model").iterdir()) == ["base.json", "pytorch_lora_weights.safetensors"]
    pipe = MaskToUltrasoundPipeline.from_pretrained(run)
    assert pipe.kind == "lora" and not pipe.conditioned_on_masks
    fov = torch.ones(1, 1, 32, 32)
    out = pipe(fov=fov, num_inference_steps=2, generator=[torch.Generator().manual_seed(0)])
    assert out.images.shape == (1, 32, 32) and out.masks.max() == 0  # no mask model: all background
    pipe.unload_lora_weights()
    plain = pipe(fov=fov, num_inference_steps=2, generator=[torch.Generator().manual_seed(0)])
    assert np.abs(plain.images - out.images).max() > 1e-4


def test_joint_run_draws_image_and_mask_side_by_side(tmp_path: Path, sd_base: Path, toy: Path):
    run = tmp_path / "joint"
    train_stable_diffusion(tiny_stable_diffusion_config(toy, sd_base, kind="joint"), run, progress=False, device="cpu")
    pipe = MaskToUltrasoundPipeline.from_pretrained(run)
    assert pipe.latent_shape(2, 32) == (2, 4, 16, 32)
    out = pipe(fov=torch.ones(2, 1, 32, 32), num_inference_steps=2,
               generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert out.images.shape == (2, 32, 32) and out.masks.shape == (2, 32, 32)
    assert set(np.unique(out.masks)) <= {0, 1}


# ---- the commands -------------------------------------------------------------------------------------


def run_cli(args: list, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["sonosynth", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out + captured.err


TINY = ["--size", "32", "--max-steps", "2", "--batch-size", "2", "--prompt-template", "image of the {organ}, {view}",
        "--split", "all"]


def test_train_generate_and_edit_from_the_command_line(tmp_path: Path, sd_base: Path, toy: Path, monkeypatch,
                                                       capsys):
    run = tmp_path / "run"
    code, text = run_cli(["train", toy, "--kind", "controlnet", "--base", sd_base, "--out", run, "--device", "cpu",
                          *TINY], monkeypatch, capsys)
    assert code == 0, text
    out = tmp_path / "synthetic"
    code, text = run_cli(["generate", run, "--source", toy, "--n", "2", "--steps", "2", "--out", out, "--attr",
                          "view=b", "--prompt", "image of the toy", "--conditioning-scale", "0.5", "--device", "cpu"],
                         monkeypatch, capsys)
    assert code == 0, text
    synthetic = Dataset.open(out)
    assert len(synthetic.records) == 2 and synthetic.info.provenance["kind"] == "controlnet"
    assert synthetic.info.provenance["config"]["prompt"] == "image of the toy"
    from sonosynth.data.imageio import read_label_map, write_png

    record = Dataset.open(toy).records[0]
    edited = read_label_map(toy / record.mask).copy()
    edited[:8, :8] = 1
    write_png(tmp_path / "edited.png", edited)
    code, text = run_cli(["edit", run, "--image", toy / record.image, "--mask", toy / record.mask, "--edited-mask",
                          tmp_path / "edited.png", "--steps", "4", "--jump-n-sample", "1", "--out", tmp_path / "edit",
                          "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, text
    assert (tmp_path / "edit" / "image.png").is_file()


def test_bad_requests_are_one_line_errors(tmp_path: Path, sd_base: Path, toy: Path, monkeypatch, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(sd_base, broken)
    shutil.rmtree(broken / "vae")
    code, text = run_cli(["train", toy, "--base", broken, "--out", tmp_path / "run", *TINY], monkeypatch, capsys)
    assert code == 1 and "missing vae/config.json" in text and "Traceback" not in text
    assert not (tmp_path / "run").exists()
    code, text = run_cli(["train", toy, "--kind", "lora", "--out", tmp_path / "run"], monkeypatch, capsys)
    assert code == 1 and "--kind lora fine-tunes a Stable Diffusion folder: pass --base" in text
    code, text = run_cli(["train", toy, "--base", sd_base, "--net-size", "tiny", "--out", tmp_path / "run"],
                         monkeypatch, capsys)
    assert code == 1 and "--net-size: not for Stable Diffusion runs" in text


def test_prompt_needs_a_stable_diffusion_run(tmp_path: Path, toy: Path, monkeypatch, capsys):
    from factories import save_tiny_run

    run = save_tiny_run(tmp_path / "scratch")
    code, text = run_cli(["generate", run, "--source", toy, "--n", "1", "--steps", "1", "--out", tmp_path / "o",
                          "--prompt", "x", "--device", "cpu"], monkeypatch, capsys)
    assert code == 1 and "--prompt and --conditioning-scale need a Stable Diffusion run" in text


def test_a_generator_per_k_can_fine_tune_stable_diffusion(tmp_path: Path, sd_base: Path, toy: Path):
    from sonosynth.evaluation.generators import GeneratorRecipe, ensure_generator

    with pytest.raises(SonosynthError, match="stable_diffusion.base must name a Stable Diffusion folder"):
        GeneratorRecipe.from_dict({"stable_diffusion": {"kind": "controlnet"}})
    recipe = GeneratorRecipe.from_dict({
        "stable_diffusion": {"base": str(sd_base), "kind": "controlnet", "size": 32, "max_steps": 2, "batch_size": 2,
                             "prompt_template": "image of the {organ}"},
        "generate": {"steps": 2}, "mask_sources": {"deform": 2}})
    real = Dataset.open(toy)
    synthetic = ensure_generator(tmp_path / "gen", real, ["s0", "s1"], recipe, seed=0, device="cpu", progress=False)
    assert len(Dataset.open(synthetic).records) == 2
    assert len(Dataset.open(tmp_path / "gen" / "data").records) == 4  # the two subjects' pairs only
    assert (tmp_path / "gen" / "run" / "model" / "base.json").is_file()


def test_gradient_checkpointing_changes_memory_not_results(tmp_path: Path, sd_base: Path, toy: Path):
    results = [train_stable_diffusion(tiny_stable_diffusion_config(toy, sd_base, lora_rank=2, max_steps=2,
                                                                   gradient_checkpointing=setting),
                                      tmp_path / setting, progress=False, device="cpu").losses
               for setting in ("no", "yes")]
    assert results[0] == pytest.approx(results[1], rel=1e-5)


@pytest.mark.slow
def test_mixed_precision_trains(tmp_path: Path, sd_base: Path, toy: Path):
    """bf16 autocast (the GPU default) in a fresh process: accelerate fixes the precision once per process."""
    import subprocess

    script = (
        "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; import math\n"
        "from factories import tiny_stable_diffusion_config\n"
        "from sonosynth.stable_diffusion.train import train_stable_diffusion\n"
        f"config = tiny_stable_diffusion_config(Path({str(toy)!r}), Path({str(sd_base)!r}), lora_rank=2, max_steps=2,"
        " mixed_precision='bf16', gradient_checkpointing='yes')\n"
        f"result = train_stable_diffusion(config, Path({str(tmp_path / 'run')!r}), progress=False, device='cpu')\n"
        "assert all(math.isfinite(x) for x in result.losses), result.losses\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "model" / "base.json").is_file()


def test_sampling_defaults_to_the_guidance_the_run_saved(tmp_path: Path, sd_base: Path, toy: Path, monkeypatch,
                                                         capsys):
    """`generate` without --guidance samples a Stable Diffusion run at its own saved guidance, not sonosynth's 1.5."""
    import csv

    train_stable_diffusion(tiny_stable_diffusion_config(toy, sd_base, guidance_scale=3.0, max_steps=2),
                           tmp_path / "run", progress=False, device="cpu")
    out = tmp_path / "synthetic"
    code, text = run_cli(["generate", tmp_path / "run", "--source", toy, "--n", "1", "--steps", "2", "--out", out,
                          "--mask-source", "train", "--device", "cpu", "--split", "all"], monkeypatch, capsys)
    assert code == 0, text
    with open(out / "manifest.csv", newline="") as fh:
        assert {float(row["guidance"]) for row in csv.DictReader(fh)} == {3.0}
