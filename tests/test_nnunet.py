"""nnU-Net v2 as a segmenter: our exporter read by nnU-Net itself, and a few iterations trained and applied (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from factories import ellipse_pair, letterboxed_pairs, save_tiny_run, write_toy_dataset
from typer.testing import CliRunner

from sonosynth.cli import app
from sonosynth.data.export import export_nnunet
from sonosynth.errors import SonosynthError
from sonosynth.evaluation.downstream import DownstreamConfig
from sonosynth.segmentation.common import SegmentationConfig, save_segmenter
from sonosynth.segmentation.nnunet import batch_planned_on_real, case_multiplicities, free_dataset_id, nnunet_folders
from sonosynth.segmentation.predict import load_segmenter, predict_masks
from sonosynth.segmentation.train import train_segmenter

pytest.importorskip("nnunetv2", reason="nnU-Net tests need the nnunetv2 package (pip install 'sonosynth[nnunet]')")

TINY_NNUNET = {"size": 32, "net": "nnunet", "max_steps": 4, "val_every": 2, "patience": 5}
LABELS = {"0": "background", "1": "head"}


def test_case_multiplicities_give_the_batch_ratio_in_expectation():
    assert case_multiplicities(5, 200, 0.5) == (40, 1)
    real, extra = case_multiplicities(20, 200, 0.25)
    assert extra * 200 / (extra * 200 + real * 20) == pytest.approx(0.25, abs=0.01)
    assert case_multiplicities(200, 20, 0.5) == (1, 10)
    assert case_multiplicities(5, 0, 0.5) == (1, 0)  # no synthetic pairs: real only
    assert case_multiplicities(0, 7, 0.5) == (0, 1)  # synthetic only


def test_the_batch_is_planned_on_the_real_cases_so_both_arms_share_it():
    # HC18 at 64 px: 48 x 64 crops; 6 real + 27 validation cases, planned with 200 synthetic ones too
    plans = {"configurations": {"2d": {"median_image_size_in_voxels": [48, 64], "patch_size": [48, 64],
                                       "batch_size": 10}}}
    assert batch_planned_on_real(plans, 33) == 2  # round(33 x 5 %) = 2: what the real-only arm is planned
    assert batch_planned_on_real(plans, 400) == 10  # enough real cases: the memory-based batch stands
    assert batch_planned_on_real(plans, 3) == 2  # never below nnU-Net's minimum


def test_nnunet_refuses_classical_augmentation_and_classical_arms():
    from sonosynth.augment import AugmentConfig

    with pytest.raises(SonosynthError, match="--classical applies to --net unet only"):
        SegmentationConfig(net="nnunet", classical=AugmentConfig.preset("classical"))
    config = DownstreamConfig(auto_split=True, ks=["2"], seeds=1, arms=["real", "real+classical"],
                              segmentation=SegmentationConfig(net="nnunet"))
    with pytest.raises(SonosynthError, match="the \\+classical arms are for --net unet"):
        config.validate(has_synthetic=False)
    with pytest.raises(SonosynthError, match="unknown segmenter"):
        SegmentationConfig(net="transunet")


def test_user_folders_are_kept_and_a_free_id_is_taken(tmp_path, monkeypatch):
    theirs = tmp_path / "theirs"
    (theirs / "Dataset001_mine").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_raw", str(theirs))
    with nnunet_folders(tmp_path / "work") as folders:
        assert folders["nnUNet_raw"] == theirs and (theirs / "Dataset001_mine").is_dir()
        assert folders["nnUNet_results"] == tmp_path / "work" / "nnUNet_results"
        assert free_dataset_id(folders) == 2
    monkeypatch.delenv("nnUNet_raw")
    import os

    assert "nnUNet_results" not in os.environ  # restored on the way out


@pytest.mark.slow
def test_nnunet_reads_our_exports_of_real_and_generated_letterboxed_pairs(tmp_path):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    from sonosynth.synthesis.generate import GenerateConfig, generate_dataset

    real = write_toy_dataset(tmp_path / "real", n=6)
    generated = generate_dataset(save_tiny_run(tmp_path / "run"), real, tmp_path / "generated",
                                 GenerateConfig(mask_source="deform", n=4, steps=2, seed=0), progress=False)
    with nnunet_folders(tmp_path / "nnunet") as folders:
        for dataset_id, folder in ((1, real), (2, generated)):
            export_nnunet(folder, folders["nnUNet_raw"], dataset_id)
            # nnU-Net's own integrity check (labels, geometry, file names) then its planner
            extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, verbose=False,
                                 show_progress_bar=False)
            plan_experiments([dataset_id])
        for plans in folders["nnUNet_preprocessed"].glob("Dataset*/nnUNetPlans.json"):
            assert "2d" in json.loads(plans.read_text())["configurations"]
        assert len(list(folders["nnUNet_preprocessed"].glob("Dataset*/nnUNetPlans.json"))) == 2


@pytest.mark.slow
def test_nnunet_trains_saves_loads_and_predicts_without_pickles(tmp_path):
    config = SegmentationConfig(**TINY_NNUNET, labels=LABELS)
    work = tmp_path / "work"
    result = train_segmenter(config, letterboxed_pairs(4, 0), letterboxed_pairs(3, 1), letterboxed_pairs(6, 2),
                             progress=False, workdir=work)
    assert result.history and all("val_dice" in h for h in result.history)
    assert result.steps == 4 and result.best_step in (2, 4) and result.details["nnunet"]["patch_size"]
    split = json.loads(next(work.glob("nnUNet_preprocessed/Dataset*/splits_final.json")).read_text())[0]
    # synthetic_ratio 0.5 with 4 real and 6 synthetic cases: each real case listed 3 times, each synthetic twice
    assert sum(k.startswith("real-") for k in split["train"]) == 12
    assert sum(k.startswith("synthetic-") for k in split["train"]) == 12
    assert len(split["val"]) == 3
    assert not list(tmp_path.rglob("*.pth")), "nnU-Net checkpoints must not be pickled"

    rng = np.random.default_rng(5)
    image, mask = ellipse_pair(rng, 48, 64)
    (before,) = predict_masks(result.segmenter(), [image])
    run = save_segmenter(tmp_path / "seg", result)
    assert {p.name for p in run.iterdir()} >= {"model.safetensors", "config.yaml", "nnunet_plans.json"}
    (after,) = predict_masks(load_segmenter(run), [image])
    assert before.shape == after.shape == (48, 64) and before.dtype == np.uint8
    np.testing.assert_array_equal(before, after)


@pytest.mark.slow
def test_segment_train_and_predict_with_nnunet_from_the_cli(tmp_path):
    data = write_toy_dataset(tmp_path / "toy", n=8)
    runner = CliRunner()
    trained = runner.invoke(app, ["segment", "train", "--auto-split", str(data), "--out", str(tmp_path / "seg"),
                                  "--net", "nnunet",
                                  "--size", "32", "--max-steps", "2", "--val-every", "2", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    metrics = json.loads((tmp_path / "seg" / "metrics.json").read_text())
    assert metrics["nnunet"]["iterations_per_epoch"] == 2 and metrics["steps"] == 2
    predicted = runner.invoke(app, ["segment", "predict", str(tmp_path / "seg"), str(data), "--out",
                                    str(tmp_path / "pred"), "--device", "cpu"])
    assert predicted.exit_code == 0, predicted.output
    assert len(list((tmp_path / "pred").glob("*.png"))) == 8


@pytest.mark.slow
def test_downstream_with_nnunet_keeps_its_folders_in_the_report(tmp_path):
    from sonosynth.evaluation.downstream import run_downstream

    real = write_toy_dataset(tmp_path / "real", n=16, seed=3)  # 8 subjects: 6 train, 1 val, 1 test
    synthetic = write_toy_dataset(tmp_path / "synth", n=6, seed=4, prefix="synth")
    config = DownstreamConfig(auto_split=True, ks=["2"], seeds=1, arms=["real+synthetic"],
                              segmentation=SegmentationConfig(**TINY_NNUNET))
    out = run_downstream(real, tmp_path / "report", config, synthetic_path=synthetic, progress=False, device="cpu")
    cell = json.loads((out / "cells" / "k2__real+synthetic__seed0.json").read_text())
    assert cell["nnunet"]["iterations_per_epoch"] == 2 and cell["n_synthetic_images"] == 6
    assert cell["metrics"] and cell["per_image"]
    assert list((out / "nnunet" / "k2__real+synthetic__seed0").glob("nnUNet_results/Dataset001_*/*/fold_0"))
    assert "nnU-Net v2 `2d`" in (out / "results.md").read_text()
