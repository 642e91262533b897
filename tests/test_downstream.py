"""The downstream experiment end to end on toy data: cells, nesting, resume, report files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from factories import write_toy_dataset
from PIL import Image

from sonosynth.data.format import Dataset
from sonosynth.errors import SonosynthError
from sonosynth.evaluation.downstream import (
    ARMS,
    Cell,
    DownstreamConfig,
    converged,
    nested_subjects,
    plan_cells,
    run_downstream,
)
from sonosynth.evaluation.generators import GeneratorRecipe
from sonosynth.evaluation.report import aggregate_cells
from sonosynth.segmentation.common import SegmentationConfig
from sonosynth.segmentation.train import real_splits

TINY = SegmentationConfig(size=32, net="tiny", max_steps=4, val_every=2, batch_size=4)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("downstream")
    # 8 subjects: the subject-wise split leaves 6 for training, 1 for val, 1 for test.
    real = write_toy_dataset(root / "real", n=16, seed=3)
    return real, write_toy_dataset(root / "synth", n=6, seed=4, prefix="synth")


def config(**kwargs) -> DownstreamConfig:
    base = {"ks": ["1", "3"], "seeds": 2, "segmentation": TINY, "auto_split": True}  # toy datasets have no split
    return DownstreamConfig(**{**base, **kwargs})


def test_nested_subject_selection() -> None:
    subjects = [f"s{i:02d}" for i in range(30)]
    for seed in range(3):
        five, ten = nested_subjects(subjects, "5", seed), nested_subjects(subjects, "10", seed)
        assert len(set(five)) == 5 and set(five) <= set(ten)
        assert sorted(nested_subjects(subjects, "all", seed)) == subjects
    assert nested_subjects(subjects, "5", 0) != nested_subjects(subjects, "5", 1)
    with pytest.raises(SonosynthError, match="k=31 exceeds the 30"):
        nested_subjects(subjects, "31", 0)


def test_plan_has_synthetic_only_once_per_seed() -> None:
    cells = plan_cells(config(arms=["real", "real+synthetic", "synthetic"]))
    assert len(cells) == 2 * (2 * 2 + 1)
    assert Cell("-", "synthetic", 1) in cells and Cell("3", "real+synthetic", 0) in cells
    assert len({c.name for c in cells}) == len(cells)


@pytest.mark.slow
def test_end_to_end_report_and_resume(datasets: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    real, synth = datasets
    out = tmp_path / "report"
    three = config(arms=["real", "real+synthetic", "synthetic"])
    run_downstream(real, out, three, synthetic_path=synth, command="sonosynth evaluate downstream ...",
                   progress=False)

    cells = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert len(cells) == 10 and "knone__synthetic__seed1.json" in cells
    one = json.loads((out / "cells" / "k3__real__seed0.json").read_text())
    assert one["n_real_subjects"] == 3 and one["n_real_images"] == 6 and one["n_synthetic_images"] == 0
    mixed = json.loads((out / "cells" / "k1__real+synthetic__seed0.json").read_text())
    assert mixed["n_real_images"] == 2 and mixed["n_synthetic_images"] == 6
    assert 0.0 <= one["metrics"]["dice_1"] <= 1.0 and "hc_abs_error_mm" in one["metrics"]
    assert one["hd95_unit"] == "mm" and len(one["per_image"]) == one["n_test_images"] == 2
    # each U-Net cell's segmenter is kept, and predicts the test images as the cell scored them
    from sonosynth.metrics import score_pair
    from sonosynth.segmentation.predict import load_segmenter, predict_masks

    test = list(Dataset.open(real).subset(ids=[e["id"] for e in one["per_image"]]))
    masks = predict_masks(load_segmenter(out / "segmenters" / "k3__real__seed0"), [s.image for s in test])
    by_id = {e["id"]: e["dice"] for e in one["per_image"]}
    for sample, mask in zip(test, masks, strict=True):
        assert score_pair(mask, sample.mask, 2).dice == pytest.approx(by_id[sample.record.id])

    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["k"], r["arm"]) for r in rows] == [
        ("1", "real"), ("1", "real+synthetic"), ("3", "real"), ("3", "real+synthetic"), ("-", "synthetic")
    ]
    assert all(r["n_seeds"] == "2" for r in rows)
    assert 0.0 <= float(rows[0]["dice_1_mean"]) <= 1.0 and float(rows[0]["dice_1_std"]) >= 0.0
    table = (out / "results.md").read_text()
    assert "| 3 | real+synthetic | 2 |" in table and "HC abs. error (mm)" in table and "±" in table
    assert "Command: `sonosynth evaluate downstream ...`" in table
    with Image.open(out / "dice_vs_k.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    page = (out / "report.html").read_text()
    assert "<table>" in page and page.count("data:image/png;base64,") == 2

    # Resume: finished cells are never retrained; a missing one is.
    (out / "cells" / "k1__real__seed1.json").unlink()
    trained: list[int] = []
    from sonosynth.segmentation import train as train_module  # run_downstream imports it at call time

    real_train = train_module.train_segmenter

    def counting(*args, **kwargs):
        trained.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_segmenter", counting)
    run_downstream(real, out, three, synthetic_path=synth, progress=False)
    assert len(trained) == 1 and (out / "cells" / "k1__real__seed1.json").is_file()
    run_downstream(real, out, three, synthetic_path=synth, progress=False)
    assert len(trained) == 1


def test_changed_settings_refuse_to_resume(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    from dataclasses import replace

    real, _ = datasets
    out = tmp_path / "report"
    run_downstream(real, out, config(ks=["1"], seeds=1, arms=["real"]), progress=False)
    other = SegmentationConfig(size=32, net="tiny", max_steps=5, val_every=2, batch_size=4)
    with pytest.raises(SonosynthError, match="different settings.*segmentation"):
        run_downstream(real, out, config(ks=["1"], seeds=1, arms=["real"], segmentation=other), progress=False)
    # a report begun before a setting existed resumes when the setting is at its default, and only then
    settings = json.loads((out / "settings.json").read_text())
    del settings["segmentation"]["synthetic_schedule"]
    (out / "settings.json").write_text(json.dumps(settings))
    run_downstream(real, out, config(ks=["1"], seeds=1, arms=["real"]), progress=False)
    pretrain = replace(TINY, synthetic_schedule="pretrain")
    with pytest.raises(SonosynthError, match="different settings.*segmentation"):
        run_downstream(real, out, config(ks=["1"], seeds=1, arms=["real"], segmentation=pretrain), progress=False)


def test_a_report_resumes_wherever_its_data_now_lies(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    """The data's location is no setting (committed cells continue on any machine); the data itself is."""
    import shutil

    from sonosynth.data.format import update_records

    real, _ = datasets
    out = tmp_path / "report"
    run_downstream(real, out, config(ks=["1"], seeds=1, arms=["real"]), progress=False)
    cell = json.loads((out / "cells" / "k1__real__seed0.json").read_text())
    assert cell["code"].startswith("0.") and "Code that made the cells: " + cell["code"] in (
        out / "results.md").read_text()
    moved = shutil.copytree(real, tmp_path / "elsewhere" / "real")
    run_downstream(moved, out, config(ks=["1"], seeds=1, arms=["real"]), progress=False, report_only=True)
    records = Dataset.open(moved).records
    records[0].subject = "someone else"  # other data at that place
    update_records(moved, records)
    with pytest.raises(SonosynthError, match="different settings.*real_manifest_sha256"):
        run_downstream(moved, out, config(ks=["1"], seeds=1, arms=["real"]), progress=False, report_only=True)


def test_bad_requests_fail_with_a_clear_message(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    real, _ = datasets
    with pytest.raises(SonosynthError, match="need --generator-per-k RECIPE or --synthetic SYNTH"):
        run_downstream(real, tmp_path / "r", config(), progress=False)
    with pytest.raises(SonosynthError, match="k=50 exceeds"):
        run_downstream(real, tmp_path / "r2", config(ks=["50"], seeds=1, arms=["real"]), progress=False)
    with pytest.raises(SonosynthError, match="positive integer or 'all'"):
        run_downstream(real, tmp_path / "r3", config(ks=["five"], arms=["real"]), progress=False)


def test_aggregation_mean_and_sample_std() -> None:
    def cell(seed: int, dice: float) -> dict:
        return {"k": "5", "arm": "real", "seed": seed, "n_real_images": 5, "n_synthetic_images": 0,
                "metrics": {"n_images": 3.0, "dice_1": dice, "hd95_1": 2.0, "hd95_1_missed": 0.0}}

    (row,) = aggregate_cells([cell(0, 0.6), cell(1, 0.8), cell(2, 0.7)])
    assert row["dice_1_mean"] == pytest.approx(0.7) and row["dice_1_std"] == pytest.approx(0.1)
    assert row["n_seeds"] == 3


def tiny_recipe(train: dict | None = None, **fields) -> GeneratorRecipe:
    """A recipe for tiny tests: the tiny denoiser at 32 px, 4 steps, 2 sampling steps; `train` changes its section."""
    return GeneratorRecipe.from_dict({"train": {"model": {"size": "tiny"}, "size": 32, "max_steps": 4, "batch_size": 4,
                                                **(train or {})},
                                      "generate": {"steps": 2}, "mask_sources": {"deform": 3, "shape": 3}, **fields})


TINY_RECIPE = tiny_recipe()


@pytest.mark.slow
def test_generator_per_k_sees_only_the_cell_subjects(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    """The honest protocol end to end: a generator per (k, seed) on those k subjects, all five arms."""
    real, _ = datasets
    out = tmp_path / "report"
    cfg = config(ks=["1", "2"], seeds=1, arms=list(ARMS), generator=TINY_RECIPE)
    run_downstream(real, out, cfg, command="sonosynth evaluate downstream --generator-per-k r.yaml", progress=False)

    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert len(cells) == 2 * len(ARMS)  # the synthetic-only arm runs per k too
    real_cell = cells["k2__real__seed0"]
    chosen = {r.subject for r in Dataset.open(out / "generators" / "k2__seed0" / "data").records}
    assert len(chosen) == 2 == real_cell["n_real_subjects"]
    # the generator's data is exactly the real arm's subjects, and its new masks come from them only
    assert chosen == set(nested_subjects(real_splits(Dataset.open(real), auto_split=True)[0].subjects, "2", 0))
    synthetic = Dataset.open(out / "generators" / "k2__seed0" / "synthetic" / TINY_RECIPE.sampling_name)
    assert len(synthetic) == 6
    sources = {r.extra["source_id"] for r in synthetic.records if r.extra["mask_source"] == "deform"}
    assert sources <= {r.id for r in Dataset.open(out / "generators" / "k2__seed0" / "data").records}
    mixed = cells["k1__real+synthetic+classical__seed0"]
    assert mixed["n_synthetic_images"] == 6 and mixed["generator"]["folder"] == "generators/k1__seed0"
    assert mixed["generator"]["synthetic"] == "generators/k1__seed0/synthetic/deform3+shape3__guidance1.5__2steps"
    assert cells["k1__synthetic__seed0"]["n_real_images"] == 0
    for cell in cells.values():
        assert {"steps", "best_step", "converged", "max_steps"} <= set(cell)
        assert set(cell["per_image"][0]) >= {"dice", "hd95", "in_truth", "in_pred"}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["generator_per_k"]["mask_sources"] == {"deform": 3, "shape": 3}

    report = (out / "results.md").read_text()
    assert "generator per k" in report and "not a scarce-data result" not in report
    assert "| 2 | real+synthetic | real+classical | Dice head (points) |" in report
    assert "- k=2: **real+synthetic** vs real+classical, Dice head: **" in report  # the verdict in words
    with open(out / "comparisons.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["verdict"] for r in rows} <= {"better", "worse", "no detectable difference"}
    assert {(r["arm"], r["baseline"]) for r in rows} >= {("real+classical", "real"), ("synthetic", "real")}

    # resume: nothing is retrained, the generators are not rebuilt
    manifest = out / "generators" / "k1__seed0" / "synthetic" / TINY_RECIPE.sampling_name / "manifest.csv"
    stamp = manifest.stat().st_mtime_ns
    run_downstream(real, out, cfg, progress=False)
    assert manifest.stat().st_mtime_ns == stamp


def test_reports_of_an_ablation_share_the_trained_generators(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    """A sampling lever reuses the generator another report trained; a training change is refused."""
    from dataclasses import replace

    real, _ = datasets
    store = tmp_path / "generators"
    arms = ["real+synthetic"]
    run_downstream(real, tmp_path / "base", config(ks=["1"], seeds=1, arms=arms, generator=TINY_RECIPE,
                                                   generators=str(store)), progress=False)
    weights = next((store / "k1__seed0" / "run").rglob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    lever = replace(TINY_RECIPE, generate=replace(TINY_RECIPE.generate, guidance_scale=1.0), mask_sources={"shape": 4})
    run_downstream(real, tmp_path / "lever", config(ks=["1"], seeds=1, arms=arms, generator=lever,
                                                    generators=str(store)), progress=False)
    assert weights.stat().st_mtime_ns == stamp  # not retrained
    assert sorted(p.name for p in (store / "k1__seed0" / "synthetic").iterdir()) == [
        "deform3+shape3__guidance1.5__2steps", "shape4__guidance1__2steps"]
    cell = json.loads((tmp_path / "lever" / "cells" / "k1__real+synthetic__seed0.json").read_text())
    assert cell["n_synthetic_images"] == 4 and cell["generator"]["folder"] == str((store / "k1__seed0").resolve())
    assert not (tmp_path / "lever" / "generators").exists()
    assert "generators" in json.loads((tmp_path / "lever" / "settings.json").read_text())
    longer = tiny_recipe({"max_steps": 8})
    with pytest.raises(SonosynthError, match="trained with other recipe settings \\(train.max_steps\\)"):
        run_downstream(real, tmp_path / "longer", config(ks=["1"], seeds=1, arms=arms, generator=longer,
                                                         generators=str(store)), progress=False)
    with pytest.raises(SonosynthError, match="needs --generator-per-k"):
        config(generators=str(store)).validate(False)


def test_a_designed_shift_trains_on_one_group_and_tests_on_all(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    """--train-where: the k subjects' pairs, validation and the generator keep the group only; the test is whole."""
    real, _ = datasets
    store = tmp_path / "generators"
    from dataclasses import replace

    widened = replace(TINY_RECIPE, size_range_widen=0.25)
    shifted = config(ks=["2"], seeds=1, arms=["real", "real+synthetic"], generator=widened,
                     generators=str(store), train_where="view=a")
    run_downstream(real, tmp_path / "shift", shifted, progress=False)
    cell = json.loads((tmp_path / "shift" / "cells" / "k2__real__seed0.json").read_text())
    assert cell["n_real_subjects"] == 2 and cell["n_real_images"] == 2  # each toy subject has one view-a image
    assert {r.attributes["view"] for r in Dataset.open(store / "k2__seed0" / "data").records} == {"a"}
    assert cell["n_test_images"] == len(real_splits(Dataset.open(real), auto_split=True)[2])  # both views
    assert json.loads((tmp_path / "shift" / "settings.json").read_text())["train_where"] == "view=a"
    report = (tmp_path / "shift" / "results.md").read_text()
    assert "**Designed shift**" in report
    assert "the shape masks' size over those subjects' range widened by 25 % at both ends" in report
    # the same store cannot serve the unshifted experiment: its generators saw other pairs
    with pytest.raises(SonosynthError, match="trained on other pairs than this cell's 4"):
        run_downstream(real, tmp_path / "whole", config(ks=["2"], seeds=1, arms=["real+synthetic"],
                                                        generator=TINY_RECIPE, generators=str(store)),
                       progress=False)
    with pytest.raises(SonosynthError, match="no training pair meets view=c"):
        run_downstream(real, tmp_path / "none", config(ks=["2"], seeds=1, arms=["real"], train_where="view=c"),
                       progress=False)
    with pytest.raises(SonosynthError, match="expected NAME<VALUE"):
        config(arms=["real"], train_where="view").validate(False)


def test_a_latent_generator_per_k_trains_its_autoencoder_on_the_k_subjects_only(datasets: tuple[Path, Path],
                                                                               tmp_path: Path) -> None:

    from sonosynth.autoencoder.config import AutoencoderConfig
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.evaluation.generators import ensure_generator

    real, _ = datasets
    train = real_splits(Dataset.open(real), auto_split=True)[0]
    recipe = tiny_recipe({"max_steps": 2}, autoencoder_steps=2, autoencoder_decoder_steps=2)
    folder = tmp_path / "k2__seed0"
    synthetic = ensure_generator(folder, train, train.subjects[:2], recipe, seed=0, device="cpu", progress=False)
    patches = AutoencoderConfig.from_yaml(folder / "autoencoder-patches" / "config.yaml")
    whole = AutoencoderConfig.from_yaml(folder / "autoencoder" / "config.yaml")
    assert patches.datasets == whole.datasets == [str(folder / "data")]  # the k subjects' images, nothing else
    assert patches.patch_size == 16 and whole.patch_size is None and whole.decoder_only
    assert whole.init == str(folder / "autoencoder-patches")
    assert MaskToUltrasoundPipeline.from_pretrained(folder / "run").vae is not None
    assert len(Dataset.open(synthetic)) == 6
    with pytest.raises(SonosynthError, match="brings its own autoencoder"):
        GeneratorRecipe.from_dict({"stable_diffusion": {"base": "sd"}, "autoencoder_steps": 5})


def test_a_generator_per_k_fine_tunes_from_the_recipes_init_run(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    """`init`: each per-k generator starts from a pretrained run (at lr 0 it stays exactly that run)."""

    from safetensors.torch import load_file

    from sonosynth.diffusion.config import TrainConfig
    from sonosynth.evaluation.generators import ensure_generator
    from sonosynth.training.run import model_folder

    real, _ = datasets
    train = real_splits(Dataset.open(real), auto_split=True)[0]
    pretrained = tmp_path / "pretrained"
    ensure_generator(pretrained, train, train.subjects[2:4], tiny_recipe({"max_steps": 2}), seed=1,
                     device="cpu", progress=False)
    recipe = tiny_recipe({"max_steps": 2, "learning_rate": 0.0, "init": str(pretrained / "run")})
    folder = tmp_path / "k2__seed0"
    ensure_generator(folder, train, train.subjects[:2], recipe, seed=0, device="cpu", progress=False)
    assert TrainConfig.from_yaml(folder / "run" / "config.yaml").init == str(pretrained / "run")
    weights = [load_file(str(model_folder(run) / "unet" / "diffusion_pytorch_model.safetensors"))
               for run in (pretrained / "run", folder / "run")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert recipe.training_fields()["train"]["init"] == str(pretrained / "run")  # another init: another generator
    with pytest.raises(SonosynthError, match="give train or stable_diffusion, not both"):
        GeneratorRecipe.from_dict({"stable_diffusion": {"base": "sd"}, "train": {"init": "run"}})


def test_committed_recipes_load_and_ablation_levers_share_generators_only_when_they_train_alike() -> None:
    """Every recipe under benchmarks/scarce loads; a lever of run_ablation.sh on the shared generator store trains
    exactly as the base recipe (else the store refuses it mid-run), and one with its own store trains differently."""
    import re

    scarce = Path(__file__).resolve().parents[1] / "benchmarks" / "scarce"
    for path in scarce.rglob("*.yaml"):
        GeneratorRecipe.from_yaml(path)
    script = (scarce.parent / "run_ablation.sh").read_text()
    levers = re.findall(r'^  "([^"|]+)\|([^"|]+)\|[^"|]*\|[^"|]+(?:\|([^"|]*))?"$', script, re.MULTILINE)
    assert len(levers) >= 10 and levers[0][0] == "base"
    base = GeneratorRecipe.from_yaml(scarce / levers[0][1]).training_fields()
    for lever, recipe, store in levers:
        trains_alike = GeneratorRecipe.from_yaml(scarce / recipe).training_fields() == base
        assert trains_alike == (store == ""), f"{lever}: its store ({store or 'shared'}) does not fit its recipe"


def test_shared_synthetic_report_says_the_generator_saw_more(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    real, synth = datasets
    run_downstream(real, tmp_path / "r", config(ks=["1"], seeds=1, arms=["real", "real+synthetic"]),
                   synthetic_path=synth, progress=False)
    assert "not a scarce-data result" in (tmp_path / "r" / "results.md").read_text()


def test_converged_means_validation_stopped_improving() -> None:
    history = [{"step": s, "val_dice": d} for s, d in enumerate([0.1, 0.5, 0.4, 0.45, 0.5], start=1)]
    assert converged(history, patience=3)  # best at the 2nd check, three checks without improvement
    assert not converged(history, patience=4)
    rising = [{"step": s, "val_dice": 0.1 * s} for s in range(1, 6)]
    assert not converged(rising, patience=2)


def test_structures_name_the_columns_and_comparisons() -> None:
    from sonosynth.evaluation.report import comparison_rows, results_markdown, structure_names

    labels = {"0": "background", "1": "LV cavity", "2": "LV myocardium"}
    structures = {"LV endocardium": [1], "LV epicardium": [1, 2], "2": [2]}
    assert structure_names(structures, labels) == {
        "LV endocardium": "LV endocardium", "LV epicardium": "LV epicardium", "2": "LV myocardium"}

    def cell(arm: str, dice: float) -> dict:
        per_image = [{"id": f"i{i}", "dice": {s: dice + 0.01 * i for s in structures},
                      "hd95": {s: 2.0 for s in structures}, "in_truth": {s: True for s in structures},
                      "in_pred": {s: True for s in structures}, "hc_abs_error_mm": None} for i in range(5)]
        metrics = {"n_images": 5.0, **{f"dice_{s}": dice for s in structures}, **{f"hd95_{s}": 2.0 for s in structures}}
        return {"k": "5", "arm": arm, "seed": 0, "n_real_images": 20, "n_synthetic_images": 0, "steps": 900,
                "best_step": 400, "converged": True, "metrics": metrics, "per_image": per_image}

    cells = [cell("real", 0.80), cell("real+synthetic", 0.85)]
    table = results_markdown(aggregate_cells(cells), labels, structures)
    assert "| Dice LV endocardium | Dice LV epicardium | Dice LV myocardium |" in table
    rows = comparison_rows(cells, structures, labels)
    dice = [r for r in rows if r["metric"] == "Dice LV epicardium (points)"]
    assert len(dice) == 1 and dice[0]["mean"] == pytest.approx(5.0) and dice[0]["verdict"] == "better"


def test_filter_and_widened_head_sizes_use_the_k_subjects_only(tmp_path: Path) -> None:
    """The fidelity filter's segmenter trains on the k subjects' pairs; shape masks reach beyond their head sizes."""
    import numpy as np
    from factories import ellipse_pair

    from sonosynth.data.ellipse import head_circumference_mm
    from sonosynth.data.format import DatasetInfo, DatasetWriter
    from sonosynth.evaluation.generators import ensure_generator
    from sonosynth.segmentation.common import SegmentationConfig as Seg
    from sonosynth.synthesis.generate import widened_hc_range

    real = tmp_path / "heads"
    info = DatasetInfo(name="heads", labels={"0": "background", "1": "head"}, attributes={"hc_mm": None})
    with DatasetWriter(real, info) as writer:
        rng = np.random.default_rng(0)
        for i in range(8):
            image, mask = ellipse_pair(rng, 48, 64)
            writer.add(f"h{i}", image, mask, subject=f"s{i}", spacing_mm=0.2, split="train",
                       hc_mm=f"{head_circumference_mm(mask, 0.2):.2f}")
    train = Dataset.open(real)
    chosen = train.subjects[:3]
    from dataclasses import replace

    recipe = tiny_recipe(generate={"steps": 2, "filter_dice": 0.01}, filter_segmenter_steps=3, hc_range_widen=0.5,
                         mask_sources={"deform": 2, "shape": 4})
    folder = tmp_path / "k3__seed0"
    synthetic = Dataset.open(ensure_generator(folder, train, chosen, recipe, seed=0, device="cpu", progress=False))
    assert synthetic.root.name == "deform2+shape4__guidance1.5__2steps__filter0.01-3steps__hc-widen0.5"
    filter_config = Seg.from_yaml(folder / "filter-segmenter-3steps" / "config.yaml")
    assert filter_config.max_steps == 3 and filter_config.classical is not None
    assert all(r.extra["fidelity_dice"] != "" for r in synthetic.records)  # every pair scored by that segmenter
    heads = [float(r.attributes["hc_mm"]) for r in train.records if r.subject in set(chosen)]
    low, high = widened_hc_range(Dataset.open(folder / "data").records, 0.5, "data")
    assert (low, high) == pytest.approx((0.5 * min(heads), 1.5 * max(heads)))
    shape = [float(r.extra["target_hc_mm"]) for r in synthetic.records if r.extra["mask_source"] == "shape"]
    assert len(shape) == 4 and all(low <= t <= high for t in shape)
    assert all(r.extra["target_hc_mm"] == "" for r in synthetic.records if r.extra["mask_source"] == "deform")
    with pytest.raises(SonosynthError, match="needs shape masks"):
        replace(TINY_RECIPE, hc_range_widen=0.2, mask_sources={"deform": 2})
    with pytest.raises(SonosynthError, match="size_range_widen must be positive and needs shape masks"):
        replace(TINY_RECIPE, size_range_widen=0.2, mask_sources={"deform": 2})
    with pytest.raises(SonosynthError, match="not both"):
        replace(recipe, size_range_widen=0.2)
    sized = replace(recipe, hc_range_widen=0.0, size_range_widen=0.3)
    assert sized.sampling_name.endswith("__size-widen0.3") and sized.training_fields() == recipe.training_fields()
    resized = Dataset.open(ensure_generator(folder, train, chosen, sized, seed=0, device="cpu", progress=False))
    assert resized.info.provenance["config"]["shape"]["size_widen"] == 0.3 and len(resized) == 6
    with pytest.raises(SonosynthError, match="generate: fidelity threshold must be in"):
        tiny_recipe(generate={"filter_dice": 1.5})
    # segmenter-in-the-loop: the hardest of 3 candidates per pair for the same k-subject segmenter, per source
    hard = replace(recipe, hard_candidates=3)
    assert hard.training_fields() == recipe.training_fields() and hard.sampling_name.endswith("__hardest-of3")
    kept = Dataset.open(ensure_generator(folder, train, chosen, hard, seed=0, device="cpu", progress=False))
    candidates = Dataset.open(kept.root.with_name(f"{kept.root.name}__candidates"))
    for source, n in (("deform", 2), ("shape", 4)):
        scores = {r.id: float(r.extra["fidelity_dice"]) for r in candidates.records if r.extra["mask_source"] == source}
        chosen_ids = [r.id for r in kept.records if r.extra["mask_source"] == source]
        assert len(scores) == 3 * n and len(chosen_ids) == n
        dropped = [d for i, d in scores.items() if i not in chosen_ids]
        assert max(scores[i] for i in chosen_ids) <= min(dropped)
    other = tiny_recipe(generate={"steps": 2, "batch_size": 2})  # a setting the folder name does not spell out
    assert other.sampling_name.startswith(TINY_RECIPE.sampling_name + "__") and other.sampling_name != \
        TINY_RECIPE.sampling_name


def test_a_selection_split_is_set_aside_from_the_reported_test_images(tmp_path: Path) -> None:
    from sonosynth.evaluation.selection import restrict, selection_ids

    real = write_toy_dataset(tmp_path / "real", n=40, seed=5)  # 20 subjects: 3 in test
    out = run_downstream(real, tmp_path / "report", config(ks=["1"], seeds=1, arms=["real", "real+classical"],
                                                           selection=0.5), progress=False)
    test = real_splits(Dataset.open(real), auto_split=True)[2].records
    chosen = selection_ids(test, 0.5)
    assert 0 < len(chosen) < len(test)
    assert {(r.subject, r.id in chosen) for r in test} == {(r.subject, r.subject in {t.subject for t in test
                                                                                      if t.id in chosen}) for r in test}
    cell = json.loads((out / "cells" / "k1__real__seed0.json").read_text())
    assert len(cell["per_image"]) == len(test)  # cells score every test image; reports cut them
    with open(out / "results.csv", newline="") as fh:
        results = list(csv.DictReader(fh))
    kept = {r.id for r in test} - chosen
    assert {int(r["n_test_images"]) for r in results} == {len(kept)}
    assert float(results[0]["dice_1_mean"]) == pytest.approx(restrict(cell, kept)["metrics"]["dice_1"])
    assert "Selection split" in (out / "results.md").read_text()
    assert (out / "selection.csv").is_file() and f"{len(chosen)} test images" in (out / "selection.md").read_text()
    with pytest.raises(SonosynthError, match="selection"):
        run_downstream(real, tmp_path / "r2", config(ks=["1"], seeds=1, arms=["real"], selection=1.5), progress=False)


def test_a_damaged_report_record_is_one_line_naming_it(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    real, _ = datasets
    out = tmp_path / "report"
    run_downstream(real, out, config(ks=["1"], seeds=1, arms=["real"]), progress=False)
    cell = out / "cells" / "k1__real__seed0.json"
    cell.write_text("{")
    with pytest.raises(SonosynthError, match=f"{cell}: invalid JSON"):
        run_downstream(real, out, config(ks=["1"], seeds=1, arms=["real"]), progress=False, report_only=True)
    (out / "settings.json").write_text("[]")
    with pytest.raises(SonosynthError, match="settings.json: report settings must be a JSON object"):
        run_downstream(real, out, config(ks=["1"], seeds=1, arms=["real"]), progress=False, report_only=True)


def test_a_recipe_saved_with_the_old_sampler_key_still_reads_and_its_report_resumes(tmp_path):
    """`sampler` became `scheduler` (the CLI's word): old recipe files load, old reports resume, a real change
    of sampler is still refused."""
    import json

    from sonosynth.errors import SonosynthError
    from sonosynth.evaluation.downstream import _check_or_write_settings
    from sonosynth.evaluation.generators import GeneratorRecipe

    assert GeneratorRecipe.from_dict({"sampler": "ddim"}).generate.scheduler == "ddim"
    with pytest.raises(SonosynthError, match="flat recipe"):
        GeneratorRecipe.from_dict({"sampler": "ddim", "scheduler": "unipc"})
    with pytest.raises(SonosynthError, match="flat recipe"):
        GeneratorRecipe.from_dict({"lr": 0.1, "train": {"size": 32}})
    # a report saved by the previous release: its recipe flat, as it wrote it (every field, sampler for scheduler)
    saved = {"model_kind": "spade", "model_size": "small", "image_size": 64, "train_steps": 1200, "batch_size": 8,
             "lr": 0.001, "warmup_steps": 20, "class_attributes": [], "mask_sources": {"deform": 100, "shape": 100},
             "sample_steps": 20, "guidance_scale": 1.5, "sampler": None, "filter_dice": None,
             "filter_segmenter_steps": 1500, "hc_range_widen": 0.0, "size_range_widen": 0.0, "base": None,
             "lora_rank": None, "prompt_template": None, "autoencoder": None, "autoencoder_steps": 0,
             "autoencoder_decoder_steps": 300, "init": None}
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"generator_per_k": saved, "seeds": 3}))
    _check_or_write_settings(path, {"generator_per_k": GeneratorRecipe().to_dict(), "seeds": 3})
    ddim = GeneratorRecipe.from_dict({"generate": {"scheduler": "ddim"}})
    with pytest.raises(SonosynthError, match="generator_per_k"):
        _check_or_write_settings(path, {"generator_per_k": ddim.to_dict(), "seeds": 3})
    assert GeneratorRecipe.from_dict(saved) == GeneratorRecipe()  # the same recipe, in today's sections


def test_seeds_run_in_worker_processes_give_the_cells_of_one_process(datasets: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """--workers 2: each seed's cells in its own process (one thread each on two cores), the same cells as one
    process with that many threads writes, and one report; a worker's failure is one line."""
    from sonosynth.evaluation.workers import run_seed_groups, seed_groups, threads_per_worker

    real, synthetic = datasets
    settings = config(ks=["1"], seeds=2, arms=["real", "real+synthetic"])
    run_downstream(real, tmp_path / "parallel", settings, synthetic_path=synthetic, progress=False, workers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_worker(2))
    try:
        run_downstream(real, tmp_path / "serial", settings, synthetic_path=synthetic, progress=False)
    finally:
        torch.set_num_threads(threads)
    parallel = {p.name: json.loads(p.read_text()) for p in (tmp_path / "parallel" / "cells").glob("*.json")}
    serial = {p.name: json.loads(p.read_text()) for p in (tmp_path / "serial" / "cells").glob("*.json")}
    assert sorted(parallel) == sorted(serial) and len(parallel) == 4
    for name, cell in serial.items():
        assert parallel[name]["per_image"] == cell["per_image"], name
    assert (tmp_path / "parallel" / "results.md").is_file()
    assert seed_groups([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]] and seed_groups([0], 4) == [[0]]
    assert threads_per_worker(2, cores=16) == 8 and threads_per_worker(4, cores=2) == 1
    from sonosynth.evaluation import workers

    with pytest.MonkeyPatch.context() as patch:  # the budget another experiment on the machine leaves this one
        patch.setenv("OMP_NUM_THREADS", "3")
        assert workers.core_budget() == 3 and threads_per_worker(2) == 1
        patch.setenv("OMP_NUM_THREADS", "many")
        assert workers.core_budget() >= 1
    call = {"real_path": tmp_path / "absent", "out": tmp_path / "failing", "config": settings,
            "synthetic_path": synthetic, "command": "", "device": "cpu"}
    (tmp_path / "failing" / "cells").mkdir(parents=True)
    with pytest.raises(SonosynthError, match="absent"):
        run_seed_groups(run_downstream, [[0], [1]], call, tmp_path / "failing" / "cells", 2, 1, progress=False)


@pytest.mark.slow
def test_unannotated_scans_reach_the_generator_as_images_and_the_baseline_as_pseudo_labels(
        datasets: tuple[Path, Path], tmp_path: Path) -> None:
    """`--unannotated N`: N more pool subjects per cell, never among its k, never val or test; the generator gets
    their image files only, self-training labels them with the real arm's segmenter."""
    from sonosynth.diffusion.config import TrainConfig
    from sonosynth.evaluation.downstream import unannotated_subjects

    real, _ = datasets
    out = tmp_path / "report"
    cfg = config(ks=["2"], seeds=1, arms=["real", "real+pseudo-labels", "real+synthetic",
                                          "real+synthetic+pseudo-labels"], generator=TINY_RECIPE, unannotated="3")
    run_downstream(real, out, cfg, progress=False)

    train, val, test = real_splits(Dataset.open(real), auto_split=True)
    chosen = set(nested_subjects(train.subjects, "2", 0))
    scans = set(unannotated_subjects(train.subjects, "2", 0, "3"))
    assert len(scans) == 3 and not scans & chosen and not scans & {*val.subjects, *test.subjects}
    scan_ids = {r.id for r in train.records if r.subject in scans}
    store = out / "generators" / "k2__seed0__unannotated3"
    assert {p.name for p in (store / "unannotated").iterdir()} == {f"{i}.png" for i in scan_ids}  # images only
    assert {r.subject for r in Dataset.open(store / "data").records} == chosen
    assert TrainConfig.from_yaml(store / "run" / "config.yaml").unannotated == str(store / "unannotated")

    pseudo = Dataset.open(out / "pseudo-labels" / "k2__real__seed0")
    assert {r.id for r in pseudo.records} == scan_ids
    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    self_trained = cells["k2__real+pseudo-labels__seed0"]
    assert self_trained["n_pseudo_labelled_images"] == len(scan_ids) and self_trained["n_synthetic_images"] == 0
    assert self_trained["n_real_subjects"] == 2 == cells["k2__real+synthetic__seed0"]["generator"]["real_subjects"]
    assert cells["k2__real+synthetic__seed0"]["generator"]["unannotated_subjects"] == 3
    both = cells["k2__real+synthetic+pseudo-labels__seed0"]  # the same teacher's labels plus the synthetic pairs
    assert both["n_pseudo_labelled_images"] == len(scan_ids) and both["n_synthetic_images"] == 6
    assert both["pseudo_labels"] == self_trained["pseudo_labels"] == "pseudo-labels/k2__real__seed0"
    report = (out / "results.md").read_text()
    assert "**Unannotated scans**" in report
    assert "| 2 | real+synthetic | real+pseudo-labels | Dice head (points) |" in report

    with pytest.raises(SonosynthError, match="give --unannotated"):
        run_downstream(real, tmp_path / "r2", config(arms=["real+pseudo-labels"]), progress=False)
    with pytest.raises(SonosynthError, match="drop k 'all'"):
        run_downstream(real, tmp_path / "r3", config(ks=["all"], arms=["real"], unannotated="2"), progress=False)
    with pytest.raises(SonosynthError, match="only 4 pool subjects remain beyond k=2"):
        run_downstream(real, tmp_path / "r4", config(ks=["2"], arms=["real"], unannotated="5"), progress=False)
