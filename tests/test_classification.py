"""Image classifiers (issue 38): the metrics, a tiny classifier that learns a visible class, the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import ellipse_pair
from typer.testing import CliRunner

from sonosynth.cli import app
from sonosynth.data.format import Dataset, DatasetInfo, DatasetWriter
from sonosynth.errors import SonosynthError
from sonosynth.metrics import balanced_accuracy, class_recalls, macro_auc


def test_balanced_accuracy_and_auc_on_known_cases() -> None:
    labels = [0, 0, 0, 0, 1, 1]
    assert class_recalls(labels, [0, 0, 0, 1, 1, 0], 2) == [0.75, 0.5]
    assert balanced_accuracy(labels, [0, 0, 0, 1, 1, 0], 2) == pytest.approx(0.625)
    assert balanced_accuracy(labels, [0] * 6, 2) == pytest.approx(0.5)  # the majority class is chance here
    assert math.isnan(class_recalls([0, 0], [0, 1], 3)[2])  # a class without images has no recall
    ranked = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9]])
    assert macro_auc(labels, ranked) == pytest.approx(1.0)
    assert macro_auc(labels, ranked[:, ::-1]) == pytest.approx(0.0)
    assert macro_auc(labels, np.full((6, 2), 0.5)) == pytest.approx(0.5)  # ties count half
    assert macro_auc([0, 0], np.full((2, 2), 0.5)) != macro_auc([0, 0], np.full((2, 2), 0.5))  # NaN: one class


def write_bright_dark(out: Path, n: int = 24, seed: int = 0) -> Path:
    """Fetal-head-like pairs whose class is visible: `bright` images have a bright patch, `dark` ones do not;
    split train / val / test by subject."""
    rng = np.random.default_rng(seed)
    info = DatasetInfo(name="brightdark", labels={"0": "background", "1": "head"},
                       attributes={"kind": ["dark", "bright"]})
    with DatasetWriter(out, info) as writer:
        for i in range(n):
            image, mask = ellipse_pair(rng, 48, 64)
            kind = ("dark", "bright")[i % 2]
            if kind == "bright":
                image[4:20, 4:20] = 250
            split = "train" if i < n // 2 else ("val" if i < 3 * n // 4 else "test")
            writer.add(f"p{i:03d}", image, mask, subject=f"s{i}", split=split, kind=kind)
    return out


def test_a_tiny_classifier_learns_a_visible_class_and_reloads(tmp_path: Path) -> None:
    from sonosynth.classification.classifier import (
        ClassifierConfig,
        evaluate,
        load_classifier,
        load_labeled,
        train_classifier,
    )

    data = Dataset.open(write_bright_dark(tmp_path / "data"))
    config = ClassifierConfig(attribute="kind", classes=["dark", "bright"], net="tiny", size=32, max_steps=60,
                              batch_size=8, val_every=10, patience=3, learning_rate=3e-3, augment=False)
    train, val, test = (load_labeled(data.subset(split=split), "kind", config.classes, 32)
                        for split in ("train", "val", "test"))
    result = train_classifier(config, train, val, progress=False)
    scores = evaluate(result.model, test, 2)
    assert scores["balanced_accuracy"] >= 0.9 and scores["macro_auc"] >= 0.9, scores
    assert result.history[0]["step"] == 10 and "val_balanced_accuracy" in result.history[0]
    again = train_classifier(config, train, val, progress=False)  # the seed fixes the run
    assert torch.equal(next(iter(again.model.state_dict().values())), next(iter(result.model.state_dict().values())))

    runner = CliRunner()
    out = tmp_path / "run"
    done = runner.invoke(app, ["classify", "train", str(data.root), "--attribute", "kind", "--out", str(out),
                               "--net", "tiny", "--size", "32", "--max-steps", "60", "--batch-size", "8",
                               "--val-every", "10", "--learning-rate", "0.003", "--device", "cpu"])
    assert done.exit_code == 0, done.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["dark", "bright"] and len(metrics["test"]["per_image"]) == len(test)
    assert set(metrics["test"]["recall"]) == {"dark", "bright"}
    model, saved = load_classifier(out)
    assert saved.classes == ["dark", "bright"]
    reloaded = evaluate(model, test, 2)["probabilities"]
    assert np.allclose(reloaded, [e["probabilities"] for e in metrics["test"]["per_image"]], atol=1e-4)


def test_a_missing_class_attribute_is_one_line(tmp_path: Path) -> None:
    from factories import write_toy_dataset

    data = write_toy_dataset(tmp_path / "toy", n=6)
    runner = CliRunner()
    result = runner.invoke(app, ["classify", "train", str(data), "--attribute", "pathology", "--out",
                                 str(tmp_path / "run"), "--auto-split", "--device", "cpu"])
    assert result.exit_code == 1 and not (tmp_path / "run").exists()
    assert "no categorical attribute 'pathology' to classify by" in str(result.exception)
    with pytest.raises(SonosynthError, match="classifier net must be one of"):
        from sonosynth.classification.classifier import ClassifierConfig

        ClassifierConfig(net="vgg")


def test_stratified_subjects_take_k_of_each_class_nested(tmp_path: Path) -> None:
    from sonosynth.evaluation.classify import stratified_subjects

    train = Dataset.open(write_bright_dark(tmp_path / "data", n=40)).subset(split="train")
    two, four = (stratified_subjects(train, "kind", ["dark", "bright"], k, 0) for k in ("2", "4"))
    kinds = {r.subject: r.attributes["kind"] for r in train.records}
    assert [kinds[s] for s in two] == ["dark", "dark", "bright", "bright"] and set(two) <= set(four)
    assert stratified_subjects(train, "kind", ["dark", "bright"], "2", 1) != two
    assert len(stratified_subjects(train, "kind", ["dark", "bright"], "all", 0)) == 20
    with pytest.raises(SonosynthError, match="k=11 per class exceeds the 10 training subjects of class 'dark'"):
        stratified_subjects(train, "kind", ["dark", "bright"], "11", 0)


def test_the_downstream_protocol_classifies_with_paired_intervals_and_resumes(tmp_path: Path) -> None:
    """--task classify: the same cells (k per class x arm x seed), a classifier each, the report's tables."""
    from sonosynth.classification.classifier import ClassifierConfig
    from sonosynth.evaluation.downstream import DownstreamConfig, run_downstream
    from sonosynth.segmentation.common import SegmentationConfig

    real = write_bright_dark(tmp_path / "real", n=40)
    synthetic = write_bright_dark(tmp_path / "synth", n=16, seed=5)  # a stand-in for generated pairs (with classes)
    config = DownstreamConfig(
        ks=["2"], seeds=2, arms=["real", "real+classical", "real+synthetic", "synthetic"], task="classify",
        segmentation=SegmentationConfig(), classifier=ClassifierConfig(
            attribute="kind", net="tiny", size=32, max_steps=40, batch_size=8, val_every=10, patience=2,
            learning_rate=3e-3))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of two worker processes on two cores runs
    try:
        out = run_downstream(real, tmp_path / "report", config, synthetic_path=synthetic, progress=False,
                             command="sonosynth evaluate downstream --task classify")
    finally:
        torch.set_num_threads(threads)
    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert len(cells) == 2 * 3 + 2  # three arms per k and seed, the synthetic-only arm once per seed
    real_cell = cells["k2__real__seed0"]
    assert real_cell["n_real_subjects"] == 4 and real_cell["n_real_images"] == 4  # 2 per class
    assert len(real_cell["per_image"]) == 10 and {"balanced_accuracy", "macro_auc"} <= set(real_cell["metrics"])
    comparisons = (out / "comparisons.csv").read_text()
    assert "real+synthetic,real,balanced accuracy (points)" in comparisons and "macro AUC (points)" in comparisons
    report = (out / "results.md").read_text()
    assert "k = training subjects **per class**" in report and "| 2 | real+synthetic | 2 |" in report
    stamp = (out / "cells" / "k2__real__seed0.json").stat().st_mtime_ns
    run_downstream(real, out, config, synthetic_path=synthetic, progress=False)  # resumes: nothing to train
    assert (out / "cells" / "k2__real__seed0.json").stat().st_mtime_ns == stamp
    # --workers 2: each seed's cells in its own process, the same cells
    run_downstream(real, tmp_path / "parallel", config, synthetic_path=synthetic, progress=False, workers=2)
    parallel = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "parallel" / "cells").glob("*.json")}
    assert sorted(parallel) == sorted(cells)
    assert all(parallel[name]["per_image"] == cell["per_image"] for name, cell in cells.items())


def test_the_paired_statistics_of_classification() -> None:
    """Weighted per-image correctness averages to the balanced accuracy; the AUC difference of an arm that ranks
    perfectly against one that ranks at random is positive with an interval above zero."""
    from sonosynth.evaluation.classify import auc_difference, weighted_correct

    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 10)
    probabilities = rng.dirichlet([1, 1], size=(3, 40))
    for seed in range(3):
        predicted = probabilities[seed].argmax(1)
        assert weighted_correct(labels, probabilities)[seed].mean() == pytest.approx(
            balanced_accuracy(labels, predicted, 2))
    perfect = np.stack([np.eye(2)[labels] * 0.8 + 0.1] * 3)
    difference = auc_difference(perfect, probabilities, labels, n_boot=200)
    assert difference.mean > 0.2 and difference.low > 0 and difference.verdict == "better"


def test_classification_cells_with_a_generator_per_k_take_its_classes(tmp_path: Path) -> None:
    """A class-conditioned generator per (k, seed) on the 2 + 2 chosen subjects only: its pairs keep the class of
    the masks they were drawn from, and the real+synthetic cell trains on them."""
    from sonosynth.classification.classifier import ClassifierConfig
    from sonosynth.evaluation.downstream import DownstreamConfig, run_downstream
    from sonosynth.evaluation.generators import GeneratorRecipe

    real = write_bright_dark(tmp_path / "real", n=40)
    recipe = GeneratorRecipe.from_dict({"train": {"model": {"size": "tiny"}, "size": 32, "max_steps": 2,
                                                  "batch_size": 4, "class_attributes": ["kind"]},
                                        "generate": {"steps": 2}, "mask_sources": {"deform": 6}})
    config = DownstreamConfig(ks=["2"], seeds=1, arms=["real+synthetic"], task="classify", generator=recipe,
                              classifier=ClassifierConfig(attribute="kind", net="tiny", size=32, max_steps=10,
                                                          batch_size=4, val_every=5, patience=1))
    out = run_downstream(real, tmp_path / "report", config, progress=False)
    cell = json.loads((out / "cells" / "k2__real+synthetic__seed0.json").read_text())
    assert cell["n_synthetic_images"] == 6 and cell["generator"]["real_subjects"] == 4
    generated = Dataset.open(cell["generator"]["synthetic"])
    assert {r.attributes["kind"] for r in generated.records} <= {"dark", "bright"}
    trained_on = Dataset.open(out / "generators" / "k2__seed0" / "data")
    assert sorted(r.attributes["kind"] for r in trained_on.records) == ["bright", "bright", "dark", "dark"]


def test_a_selection_split_is_cut_out_of_classification_cells(tmp_path: Path) -> None:
    """--selection with --task classify: tables on the other test images, comparisons on the selection apart; the
    cut cell's metrics are recomputed from its kept images."""
    from sonosynth.evaluation.classify import restrict, write_classification_report

    labels = [0, 0, 0, 1, 1, 1, 0, 1, 0, 1]
    right = [[0.9, 0.1] if y == 0 else [0.2, 0.8] for y in labels]
    wrong_on_first_four = [[1 - p, p] for p, _ in right[:4]] + right[4:]
    cells = [{"k": "2", "arm": arm, "seed": 0, "n_real_images": 4, "n_synthetic_images": 0, "converged": True,
              "metrics": {}, "per_image": [{"id": f"i{n}", "label": y, "probabilities": p}
                                           for n, (y, p) in enumerate(zip(labels, probs, strict=True))]}
             for arm, probs in (("real", right), ("real+synthetic", wrong_on_first_four))]
    selection = {"i0", "i1", "i2", "i3"}
    cut = restrict(cells[1], selection, ["a", "b"])
    assert cut["n_test_images"] == 4 and cut["metrics"]["balanced_accuracy"] == 0.0
    assert restrict(cells[1], {f"i{n}" for n in range(4, 10)}, ["a", "b"])["metrics"]["balanced_accuracy"] == 1.0
    settings = {"real": "r", "selection": 0.4, "classifier": {"classes": ["a", "b"], "attribute": "kind",
                                                                "net": "tiny", "size": 32}}
    write_classification_report(tmp_path, cells, settings, 2, "", selection=selection)
    report, chosen = (tmp_path / "results.md").read_text(), (tmp_path / "selection.md").read_text()
    assert "| 2 | real+synthetic | real | balanced accuracy (points) | +0.00 [+0.00, +0.00] | 1 x 6 |" in report
    assert "**Selection split**: 4 test images" in report
    assert "| 2 | real+synthetic | real | balanced accuracy (points) | -100.00" in chosen and "1 x 4" in chosen
