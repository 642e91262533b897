"""`generate_dataset` end to end on a tiny untrained model: layout, provenance, mask validity, filter."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from factories import ellipse_pair, save_tiny_run, write_cardiac_dataset, write_toy_dataset
from typer.testing import CliRunner

from sonosynth.cli import app
from sonosynth.data.ellipse import head_circumference_mm
from sonosynth.data.format import Dataset, DatasetInfo, DatasetWriter
from sonosynth.errors import DataError, SonosynthError
from sonosynth.synthesis.fidelity import score_samples
from sonosynth.synthesis.generate import AttributePolicy, GenerateConfig, generate_dataset
from sonosynth.synthesis.masks import AnatomyRules, DeformConfig


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    return save_tiny_run(tmp_path_factory.mktemp("run") / "run", class_values={"view": ["a", "b"]})


@pytest.fixture(scope="module")
def toy_source(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy", n=6)


def test_train_masks_give_a_dataset_with_provenance(tmp_path, toy_run, toy_source):
    out = generate_dataset(toy_run, toy_source, tmp_path / "synth",
                           GenerateConfig(mask_source="train", n=5, steps=2, batch_size=3, seed=1), progress=False)
    synth, source = Dataset.open(out), Dataset.open(toy_source)
    assert len(synth) == 5 and synth.info.labels == source.info.labels
    source_masks = {r.id: s.mask for r, s in zip(source.records, source, strict=True)}
    for sample in synth:
        extra = sample.record.extra
        assert extra["mask_source"] == "train" and extra["steps"] == "2" and extra["scheduler"] == "ddim"
        assert extra["model"] == str(toy_run) and extra["source_id"] in source_masks and extra["seed"]
        assert sample.image.shape == sample.mask.shape == (24, 32)  # the model's grid, aspect kept
        assert sample.record.spacing_mm == pytest.approx(0.2 * 64 / 32)
        assert sample.record.attributes["view"] in ("a", "b")
        assert set(np.unique(sample.mask)) == {0, 1}
        assert sample.image.std() > 0
    provenance = json.loads((out / "dataset.json").read_text())["provenance"]
    assert provenance["config"]["mask_source"] == "train" and provenance["written"] == 5

    from sonosynth.data.export import export_nnunet

    exported = Path(export_nnunet(out, tmp_path / "nnunet", 501))
    assert len(list((exported / "imagesTr").glob("*_0000.png"))) == 5
    assert len(list((exported / "labelsTr").glob("*.png"))) == 5


def test_generation_is_reproducible_from_the_seed(tmp_path, toy_run, toy_source):
    config = GenerateConfig(mask_source="deform", n=3, steps=2, batch_size=2, seed=4)
    a = Dataset.open(generate_dataset(toy_run, toy_source, tmp_path / "a", config, progress=False))
    config.batch_size = 3  # per-sample generators: batching does not change the result
    b = Dataset.open(generate_dataset(toy_run, toy_source, tmp_path / "b", config, progress=False))
    assert [r.mask_sha256 for r in a.records] == [r.mask_sha256 for r in b.records]
    for x, y in zip(a, b, strict=True):
        assert np.abs(x.image.astype(int) - y.image.astype(int)).max() <= 1


@pytest.mark.parametrize("mask_source", ["deform", "shape"])
def test_new_masks_keep_the_anatomy_of_a_multilabel_source(tmp_path, mask_source):
    source = write_cardiac_dataset(tmp_path / "cardiac")
    run = save_tiny_run(tmp_path / "run", num_labels=4, size=32)
    out = generate_dataset(run, source, tmp_path / "synth",
                           GenerateConfig(mask_source=mask_source, n=4, steps=1, batch_size=4), progress=False)
    rules = AnatomyRules.consensus([AnatomyRules.of(s.mask) for s in Dataset.open(source)])
    synth = Dataset.open(out)
    source_masks = {s.mask.tobytes() for s in Dataset.open(source)}
    for sample in synth:
        assert set(np.unique(sample.mask)) == {0, 1, 2, 3}
        assert rules.violations(sample.mask) == []  # one region each, LV inside the myocardium
        assert sample.record.extra["mask_source"] == mask_source
        assert sample.mask.tobytes() not in source_masks
    assert len({s.mask.tobytes() for s in synth}) == 4


def test_shape_source_hits_target_head_circumference(tmp_path, toy_run):
    source = tmp_path / "heads"
    with DatasetWriter(source, DatasetInfo(name="heads", labels={"0": "background", "1": "head"},
                                           attributes={"hc_mm": None})) as writer:
        rng = np.random.default_rng(0)
        for i in range(6):
            image, mask = ellipse_pair(rng, 48, 64)
            writer.add(f"h{i}", image, mask, spacing_mm=0.2, hc_mm=f"{head_circumference_mm(mask, 0.2):.2f}")
    config = GenerateConfig(mask_source="shape", n=3, steps=1, target_hc_mm=(12.0, 16.0), seed=2)
    synth = Dataset.open(generate_dataset(toy_run, source, tmp_path / "synth", config, progress=False))
    for sample in synth:
        target = float(sample.record.extra["target_hc_mm"])
        assert 12.0 <= target <= 16.0
        measured = head_circumference_mm(sample.mask, sample.record.spacing_mm)
        assert abs(measured - target) / target < 0.02
        assert float(sample.record.attributes["hc_mm"]) == pytest.approx(measured, abs=0.01)

    # --hc-widen: the source's own range, widened (here beyond any source head)
    heads = [float(r.attributes["hc_mm"]) for r in Dataset.open(source).records]
    widened = replace(config, target_hc_mm=None, hc_widen=0.5, n=6)
    synth = Dataset.open(generate_dataset(toy_run, source, tmp_path / "wide", widened, progress=False))
    targets = [float(r.extra["target_hc_mm"]) for r in synth.records]
    assert all(0.5 * min(heads) <= t <= 1.5 * max(heads) for t in targets)
    assert min(targets) < min(heads) or max(targets) > max(heads)
    with pytest.raises(SonosynthError, match="either a head-circumference range or"):
        replace(config, hc_widen=0.2)

    # the command's default recipe on heads with hc_mm: deformed + shape masks, the head circumference widened
    result = CliRunner().invoke(app, ["generate", str(toy_run), "--source", str(source), "--n", "4", "--steps", "1",
                                      "--out", str(tmp_path / "default")])
    assert result.exit_code == 0, result.output
    made = Dataset.open(tmp_path / "default")
    assert made.info.provenance["mask_sources"] == {"deform": 2, "shape": 2}
    targets = [float(r.extra["target_hc_mm"]) for r in made.records if r.extra["mask_source"] == "shape"]
    assert len(targets) == 2 and all(0.75 * min(heads) <= t <= 1.25 * max(heads) for t in targets)
    assert made.info.provenance["config"]["shape"]["size_widen"] == 0.0
    parts = made.info.provenance["parts"]
    assert parts["shape"]["config"]["hc_widen"] == 0.25 and parts["deform"]["config"]["hc_widen"] == 0
    shape_part = parts["shape"]
    low, high = shape_part["hc_range_mm"]
    assert low == pytest.approx(0.75 * min(heads)) and high == pytest.approx(1.25 * max(heads))


def test_attribute_policy_fixes_or_samples_conditioning(tmp_path, toy_run, toy_source):
    policy = AttributePolicy.parse(fixed=[], distribution=["view=a:0,b:1"])
    synth = Dataset.open(generate_dataset(toy_run, toy_source, tmp_path / "s1",
                                          GenerateConfig(n=4, steps=1, attributes=policy), progress=False))
    assert {r.attributes["view"] for r in synth.records} == {"b"}
    policy = AttributePolicy.parse(fixed=["view=a"])
    synth = Dataset.open(generate_dataset(toy_run, toy_source, tmp_path / "s2",
                                          GenerateConfig(n=2, steps=1, attributes=policy), progress=False))
    assert {r.attributes["view"] for r in synth.records} == {"a"}
    with pytest.raises(DataError, match="not among"):
        generate_dataset(toy_run, toy_source, tmp_path / "s3",
                         GenerateConfig(n=1, attributes=AttributePolicy.parse(fixed=["view=c"])), progress=False)
    with pytest.raises(SonosynthError, match="NAME=VALUE"):
        AttributePolicy.parse(fixed=["view"])


@pytest.mark.parametrize("mask_source", ["train", "deform", "shape"])
def test_requested_attributes_select_matching_anatomy(tmp_path, mask_source):
    source = write_cardiac_dataset(tmp_path / "cardiac", n=12, atrium_in_2ch=False)
    run = save_tiny_run(tmp_path / "run", num_labels=4, size=32)
    policy = AttributePolicy.parse(fixed=["view=2CH"])
    out = generate_dataset(run, source, tmp_path / "synth",
                           GenerateConfig(mask_source=mask_source, n=4, steps=1, attributes=policy), progress=False)
    two_chamber = {r.id for r in Dataset.open(source).records if r.attributes["view"] == "2CH"}
    for sample in Dataset.open(out):
        assert sample.record.attributes["view"] == "2CH"
        assert sample.record.extra["source_id"] in two_chamber
        assert set(np.unique(sample.mask)) == {0, 1, 2}  # 2-chamber anatomy here has no atrium


def test_fidelity_filter_drops_or_flags_and_records_scores(tmp_path, toy_run, toy_source):
    calls = []

    def finds_nothing(images):  # a fake segmenter that never sees the structure: Dice 0
        calls.append(len(images))
        return [np.zeros(im.shape, np.uint8) for im in images]

    def perfect_on_mask_area(images):
        return [(im > 0).astype(np.uint8) for im in images]

    flagged = Dataset.open(generate_dataset(
        toy_run, toy_source, tmp_path / "flag",
        GenerateConfig(n=3, steps=1, filter_dice=0.5, filter_mode="flag"), predictor=finds_nothing, progress=False))
    assert len(flagged) == 3 and calls == [3]
    assert all(r.extra["flagged"] == "1" and float(r.extra["fidelity_dice"]) == 0.0 for r in flagged.records)

    with pytest.raises(DataError, match=r"none of the 6 samples drawn passed the fidelity filter \(Dice >= 0.5\)"):
        generate_dataset(toy_run, toy_source, tmp_path / "drop",
                         GenerateConfig(n=3, steps=1, filter_dice=0.5, max_draws_factor=2), predictor=finds_nothing,
                         progress=False)
    assert not (tmp_path / "drop").exists() and not list(tmp_path.glob("drop.tmp-*"))

    kept = Dataset.open(generate_dataset(
        toy_run, toy_source, tmp_path / "kept",
        GenerateConfig(n=2, steps=1, filter_dice=0.0), predictor=perfect_on_mask_area, progress=False))
    assert len(kept) == 2 and all(r.extra["flagged"] == "0" for r in kept.records)
    assert all(0.0 <= float(r.extra["fidelity_dice"]) <= 1.0 for r in kept.records)

    scored = Dataset.open(generate_dataset(  # a segmenter without a threshold: scores recorded, nothing filtered
        toy_run, toy_source, tmp_path / "scored", GenerateConfig(n=2, steps=1), predictor=finds_nothing,
        progress=False))
    assert len(scored) == 2
    assert all(float(r.extra["fidelity_dice"]) == 0.0 and r.extra["flagged"] == "" for r in scored.records)


def test_joint_model_draws_its_own_masks_and_scores_their_fit(tmp_path, toy_source):
    run = save_tiny_run(tmp_path / "joint", kind="joint")
    seen = []

    def segments_the_bright_half(images):
        seen.extend(images)
        return [(im > np.median(im)).astype(np.uint8) for im in images]

    out = generate_dataset(run, toy_source, tmp_path / "pairs", GenerateConfig(n=3, steps=1, batch_size=2),
                           predictor=segments_the_bright_half, progress=False)
    pairs = Dataset.open(out)
    assert len(pairs) == 3 and len(seen) == 3
    for pair in pairs:
        assert pair.image.shape == pair.mask.shape and max(pair.image.shape) == 32
        assert set(np.unique(pair.mask)) <= {0, 1}
        expected = score_samples([pair.image], [pair.mask], segments_the_bright_half, 2)[0]
        assert float(pair.record.extra["fidelity_dice"]) == pytest.approx(expected, abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joint", "pairs"]  # no staging folder left

    with pytest.raises(SonosynthError, match="mask-conditioned"):
        generate_dataset(run, toy_source, tmp_path / "deformed", GenerateConfig(mask_source="deform", n=1),
                         progress=False)
    with pytest.raises(SonosynthError, match="mask-conditioned"):
        generate_dataset(run, toy_source, tmp_path / "filtered", GenerateConfig(n=1, filter_dice=0.5),
                         predictor=segments_the_bright_half, progress=False)
    with pytest.raises(SonosynthError, match="mask-conditioned"):
        generate_dataset(run, toy_source, tmp_path / "fixed",
                         GenerateConfig(n=1, attributes=AttributePolicy(fixed={"view": "a"})), progress=False)
    assert not any((tmp_path / name).exists() for name in ("deformed", "filtered", "fixed"))


def test_bad_requests_fail_cleanly(tmp_path, toy_run, toy_source):
    with pytest.raises(SonosynthError, match="segmenter"):
        generate_dataset(toy_run, toy_source, tmp_path / "x", GenerateConfig(filter_dice=0.9), progress=False)
    with pytest.raises(DataError, match="labels"):
        generate_dataset(save_tiny_run(tmp_path / "run4", num_labels=4), toy_source, tmp_path / "y",
                         GenerateConfig(n=1), progress=False)
    with pytest.raises(SonosynthError, match="mask source"):
        GenerateConfig(mask_source="copy")
    with pytest.raises(SonosynthError, match="shape"):
        GenerateConfig(mask_source="train", target_hc_mm=(100.0, 200.0))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_generate_command_line(tmp_path, toy_run, toy_source):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["generate", str(toy_run), "--source", str(toy_source), "--masks", "shape",
                                      "--n", "2", "--steps", "1", "--hc-mm", "12:14", "--attr", "view=b",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    synth = Dataset.open(out)
    assert len(synth) == 2 and {r.attributes["view"] for r in synth.records} == {"b"}
    assert all(12 <= float(r.extra["target_hc_mm"]) <= 14 for r in synth.records)
    result = CliRunner().invoke(app, ["generate", str(toy_run), "--source", str(toy_source), "--n", "2",
                                      "--filter-dice", "0.9", "--out", str(tmp_path / "nofilter")])
    assert isinstance(result.exception, SonosynthError) and "--segmenter" in str(result.exception)
    # the default recipe without hc_mm: deformed + shape masks, the shape's size in pixels widened
    result = CliRunner().invoke(app, ["generate", str(toy_run), "--source", str(toy_source), "--n", "2",
                                      "--steps", "1", "--out", str(tmp_path / "default")])
    assert result.exit_code == 0, result.output
    made = Dataset.open(tmp_path / "default")
    assert made.info.provenance["mask_sources"] == {"deform": 1, "shape": 1}
    assert made.info.provenance["config"]["shape"]["size_widen"] == 0.25
    # --size-widen: the same new masks, their sizes drawn over a wider range (recorded with the run's settings)
    result = CliRunner().invoke(app, ["generate", str(toy_run), "--source", str(toy_source), "--mask-source", "shape",
                                      "--n", "2", "--steps", "1", "--size-widen", "0.3", "--out", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    widened = Dataset.open(tmp_path / "w")
    assert len(widened) == 2 and widened.info.provenance["config"]["shape"]["size_widen"] == 0.3
    result = CliRunner().invoke(app, ["generate", str(toy_run), "--source", str(toy_source), "--mask-source", "shape",
                                      "--n", "2", "--size-widen", "0.3", "--hc-mm", "12:14",
                                      "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, SonosynthError) and "widened size range" in str(result.exception)
    assert not (tmp_path / "x").exists()
    # several mask sources: --n split between them, one dataset; the head-size options reach the shape part only
    result = CliRunner().invoke(app, ["generate", str(toy_run), "--source", str(toy_source), "--mask-source",
                                      "deform,shape", "--n", "3", "--steps", "1", "--size-widen", "0.3",
                                      "--out", str(tmp_path / "mix")])
    assert result.exit_code == 0, result.output
    mixed = Dataset.open(tmp_path / "mix")
    assert sorted(r.extra["mask_source"] for r in mixed.records) == ["deform", "deform", "shape"]
    assert mixed.info.provenance["mask_sources"] == {"deform": 2, "shape": 1}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mix")) == ["mix"]  # parts merged away
    for args, message in ((["deform,deform", "--n", "2"], "each once"),
                          (["deform,shape", "--n", "2", "--hc-mm", "12"], "--mask-source shape alone")):
        result = CliRunner().invoke(app, ["generate", str(toy_run), "--source", str(toy_source), "--mask-source",
                                          *args, "--out", str(tmp_path / "bad")])
        assert isinstance(result.exception, SonosynthError) and message in str(result.exception), result.output
    assert not (tmp_path / "bad").exists()


def test_new_masks_stay_inside_the_field_of_view():
    from sonosynth.data.format import Record
    from sonosynth.synthesis.generate import MaskSource, SourcePair

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    pairs = []
    for i in range(6):
        mask = (((yy - 24) / 9.0) ** 2 + ((xx - 20 - 2 * i) / 11.0) ** 2 <= 1).astype(np.uint8)
        fov = (xx < 40).astype(np.uint8)  # a narrow fan: the right third is outside
        pairs.append(SourcePair(Record(f"r{i}", "", ""), mask, fov, 0.5))
    for source in ("deform", "shape"):
        masks = MaskSource(pairs, GenerateConfig(mask_source=source,
                                                 deform=DeformConfig(translation_frac=0.3)))
        for _ in range(10):
            candidate = masks.draw(rng)
            outside = ((candidate.mask > 0) & (candidate.fov == 0)).sum()
            assert outside <= 0.02 * (candidate.mask > 0).sum()


def test_shape_masks_take_their_attributes_from_pairs_that_have_the_structure():
    """A sampled lesion is never labelled `normal`; a group with no structure at all keeps none."""
    from sonosynth.data.format import Record
    from sonosynth.synthesis.generate import MaskSource, SourcePair

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    fov = np.ones((48, 64), np.uint8)
    pairs = [SourcePair(Record(f"b{i}", "", "", attributes={"pathology": "benign"}),
                        (((yy - 24) / 8.0) ** 2 + ((xx - 28 - i) / 10.0) ** 2 <= 1).astype(np.uint8), fov, 0.5)
             for i in range(6)]
    pairs += [SourcePair(Record(f"n{i}", "", "", attributes={"pathology": "normal"}), np.zeros((48, 64), np.uint8),
                         fov, 0.5) for i in range(6)]
    masks = MaskSource(pairs, GenerateConfig(mask_source="shape"))
    drawn = [masks.draw(rng) for _ in range(20)]
    assert all((c.mask > 0).any() and c.base.record.attributes["pathology"] == "benign" for c in drawn)
    normal = [masks.draw(rng, {"pathology": "normal"}) for _ in range(5)]
    assert all(not (c.mask > 0).any() and c.base.record.attributes["pathology"] == "normal" for c in normal)


def test_models_saved_before_class_values_read_them_from_their_run(tmp_path, toy_source):
    """Legacy runs: names from RUN/config.yaml, values from the training dataset it names; else a clear error."""
    from sonosynth.synthesis.sampling import load_synthesis_model

    run = save_tiny_run(tmp_path / "old", class_values={"view": ["a", "b"]})
    index = run / "model" / "model_index.json"
    saved = json.loads(index.read_text())
    del saved["class_values"]
    index.write_text(json.dumps(saved))
    (run / "config.yaml").write_text(yaml.safe_dump({"class_attributes": ["view"], "dataset": str(toy_source)}))
    assert load_synthesis_model(run).class_values == {"view": ["a", "b"]}
    (run / "config.yaml").write_text(yaml.safe_dump({"class_attributes": ["view"], "dataset": str(tmp_path / "gone")}))
    with pytest.raises(SonosynthError, match="does not store their values.*gone"):
        load_synthesis_model(run)
    import shutil

    shutil.copytree(run / "model", tmp_path / "alone")
    with pytest.raises(SonosynthError, match="no .*config.yaml"):
        load_synthesis_model(tmp_path / "alone")


def test_flag_then_unflag_leaves_the_manifest_as_it_was(tmp_path: Path) -> None:
    from sonosynth.app.session import set_flag

    data = write_toy_dataset(tmp_path / "toy")
    set_flag(data, ["toy_001"], True)
    assert Dataset.open(data).subset(ids=["toy_001"]).records[0].extra["flagged"] == "1"
    set_flag(data, ["toy_001"], False)
    assert {r.extra.get("flagged", "") for r in Dataset.open(data).records} == {""}  # not 0 where it was empty
