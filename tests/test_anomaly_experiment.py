"""`evaluate anomaly`: the generator and the simulated arm never see a positive; the report pairs the arms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import ellipse_pair

from sonosynth.classification.classifier import ClassifierConfig
from sonosynth.data.format import Dataset, DatasetInfo, DatasetWriter
from sonosynth.errors import SonosynthError
from sonosynth.evaluation.anomaly import AnomalyConfig, run_anomaly
from sonosynth.evaluation.generators import GeneratorRecipe

RECIPE = GeneratorRecipe.from_dict({"train": {"model": {"size": "tiny"}, "size": 32, "max_steps": 3, "batch_size": 4},
                                    "generate": {"steps": 2}, "mask_sources": {"deform": 5}})


@pytest.fixture(scope="module")
def lesions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Benign (round) and malignant (a spike added) lesions, normal images without one, split by image."""
    out = tmp_path_factory.mktemp("anomaly") / "lesions"
    info = DatasetInfo(name="lesions", labels={"0": "background", "1": "lesion"},
                       attributes={"pathology": ["benign", "malignant", "normal"]})
    rng = np.random.default_rng(0)
    splits = {"train": 4, "val": 2, "test": 3}
    with DatasetWriter(out, info) as writer:
        for split, n in splits.items():
            for pathology in ("benign", "malignant", "normal"):
                for i in range(n):
                    image, mask = ellipse_pair(rng, 40, 48)
                    if pathology == "malignant":
                        mask[5:20, 22:25] = 1
                        image[5:20, 22:25] = 200
                    if pathology == "normal":
                        mask[:] = 0
                    name = f"{split}_{pathology}_{i}"
                    writer.add(name, image, mask, subject=name, split=split, pathology=pathology)
    return out


def test_simulated_positives_come_from_negatives_only_and_every_arm_is_scored(lesions: Path, tmp_path: Path) -> None:
    config = AnomalyConfig(ks=["2"], seeds=1, generator=RECIPE, anomaly="spiculated", validation_share=0.4,
                           classifier=ClassifierConfig(net="tiny", size=32, max_steps=4, val_every=2, batch_size=4))
    out = run_anomaly(lesions, tmp_path / "report", config, progress=False)

    data = Dataset.open(out / "generators" / "k2__seed0" / "data")
    assert {r.attributes["pathology"] for r in data.records} == {"benign"} and len(data) == 2
    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert set(cells) == {"k2__one-class__seed0", "k2__simulated__seed0", "k2__real-positive__seed0"}
    simulated, reference = cells["k2__simulated__seed0"], cells["k2__real-positive__seed0"]
    assert simulated["positives"] == "simulated" and simulated["n_positive_images"] == 3  # 5 made, 2 validate
    assert reference["positives"] == "real" and reference["n_positive_images"] == 2
    made = Dataset.open(out / simulated["generator"]["synthetic"])
    assert len(made) == 5 and {r.extra["anomaly"] for r in made.records} == {"spiculated"}
    test_ids = {f"test_{p}_{i}" for p in ("benign", "malignant") for i in range(3)}  # normal images not tested
    for cell in cells.values():
        assert {e["id"] for e in cell["per_image"]} == test_ids
        assert 0.0 <= cell["metrics"]["auc"] <= 1.0
    errors = [e["denoising_error"] for e in cells["k2__one-class__seed0"]["per_image"]]
    assert all(np.isfinite(errors)) and len(set(errors)) > 1
    report = (out / "results.md").read_text()
    assert "| 2 | one-class | 1 | 0 |" in report and "| 2 | real-positive |" in report
    assert report.split("| 2 | one-class | 1 | 0 |")[1].split("\n")[0].endswith("| - |")  # nothing trained
    assert "| 2 | one-class | " in report.split("Paired differences")[1]  # simulated vs one-class, paired
    assert (out / "samples.png").is_file()

    # resume writes nothing new; a changed setting is refused
    stamp = (out / "cells" / "k2__simulated__seed0.json").stat().st_mtime_ns
    run_anomaly(lesions, out, config, progress=False)
    assert (out / "cells" / "k2__simulated__seed0.json").stat().st_mtime_ns == stamp
    with pytest.raises(SonosynthError, match="different settings"):
        run_anomaly(lesions, out, AnomalyConfig(**{**config.__dict__, "anomaly": "taller-than-wide"}), progress=False)


def test_requests_that_cannot_run_are_one_line_errors(lesions: Path, tmp_path: Path) -> None:
    with pytest.raises(SonosynthError, match="must differ"):
        AnomalyConfig(negative="benign", positive="benign")
    with pytest.raises(SonosynthError, match="no class cancer"):
        run_anomaly(lesions, tmp_path / "a", AnomalyConfig(positive="cancer", generator=RECIPE), progress=False)
    with pytest.raises(SonosynthError, match="exceeds the 4 training subjects"):
        run_anomaly(lesions, tmp_path / "b", AnomalyConfig(ks=["5"], generator=RECIPE), progress=False)
    with pytest.raises(SonosynthError):
        AnomalyConfig(anomaly="wobbly")
