"""A generated corpus (Hypothesis): valid datasets, manifests, dataset.json files and configs, mutated at random
(encodings, types, ranges, path-like ids, extra or missing fields), against the contract of
docs/reliability.md: exit 0 or exit 1 with one `error:` line naming the file, no traceback, the input
byte-identical afterwards, and nothing half-written left behind.

Examples are capped (tiny datasets, in-process commands; the same draws every run, so CI is repeatable) and the
module runs in seconds; a failure prints the mutation Hypothesis shrank it to.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from factories import run_cli, write_toy_dataset
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from sonosynth.errors import SonosynthError

# SONOSYNTH_FUZZ_EXAMPLES=2000 (and SONOSYNTH_FUZZ_RANDOM=1 for new draws each run) for a long hunt.
FUZZ = settings(max_examples=int(os.environ.get("SONOSYNTH_FUZZ_EXAMPLES", "40")), deadline=None,
                derandomize=os.environ.get("SONOSYNTH_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

NASTY = st.one_of(
    st.sampled_from(["", "..", "../../x", "/etc/passwd", "a/b", "a\\b", "x\x00y", "\u202eevil", "nan", "inf",
                     "-inf", "-1", "1e309", "0", " ", "CON", "Ümlaut", "a" * 300, "toy_000", "TOY_000", "1,2",
                     '"quoted"', "line\nbreak", "images/toy_001.png", "masks/../images/toy_000.png"]),
    st.text(max_size=12),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8) | NASTY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | NASTY, inner, max_size=3),
    max_leaves=6,
)
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("fuzz") / "data", n=4)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_contract(root: Path, out: Path | None, code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 1), f"exit {code}: {err}"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 1 and out is not None:
        assert len(errors) == 1, err
        named = [str(root), str(out)]
        assert any(name in errors[0] for name in named), f"names no file of the dataset: {errors[0]}"
        assert not out.exists() or not any(out.iterdir()), f"{out} was written: {list(out.iterdir())}"
    if out is not None and out.exists():
        assert not [p for p in out.iterdir() if ".tmp-" in p.name], "a temporary folder was left"


def run_on_mutant(root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`data check` and `data export` on a mutated dataset: the contract, and the input unchanged."""
    before = snapshot(root)
    code, _, err = run_cli(["data", "check", root], capsys, monkeypatch)
    check_contract(root, None, code, err)
    out = root.parent / "raw"
    code, _, err = run_cli(["data", "export", "nnunet", root, out, "--id", 9], capsys, monkeypatch)
    check_contract(root, out, code, err)
    assert snapshot(root) == before, "a command changed its input"
    if code == 0:
        assert [p.name for p in out.iterdir()] == [next(out.iterdir()).name] and next(out.iterdir()).is_dir()


@contextmanager
def mutant(pristine: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh copy of the valid dataset to mutate inside the block; then `data check` and `data export` run on it
    (`run_on_mutant`), and the copy is removed."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-")) / "data"
    shutil.copytree(pristine, root)
    try:
        yield root
        run_on_mutant(root, capsys, monkeypatch)
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_mutated_manifests_keep_the_contract(pristine: Path, data: st.DataObject,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with mutant(pristine, capsys, monkeypatch) as root:
        lines = list(csv.reader(io.StringIO((root / "manifest.csv").read_text())))
        kind = data.draw(st.sampled_from(["cell", "header", "add field", "drop field", "add row", "encoding"]))
        row = data.draw(st.integers(1, len(lines) - 1))
        column = data.draw(st.integers(0, len(lines[0]) - 1))
        if kind == "cell":
            lines[row][column] = data.draw(NASTY)
        elif kind == "header":
            lines[0][column] = data.draw(NASTY)
        elif kind == "add field":
            lines[row].append(data.draw(NASTY))
        elif kind == "drop field":
            del lines[row][column]
        elif kind == "add row":
            lines.append([data.draw(NASTY) for _ in lines[0]])
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(lines)
        encoding = data.draw(ENCODINGS) if kind == "encoding" else "utf-8"
        (root / "manifest.csv").write_bytes(text.getvalue().encode(encoding, errors="replace"))


@FUZZ
@given(data=st.data())
def test_mutated_dataset_json_keeps_the_contract(pristine: Path, data: st.DataObject,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with mutant(pristine, capsys, monkeypatch) as root:
        info: Any = json.loads((root / "dataset.json").read_text())
        where = data.draw(st.sampled_from(["top", "labels", "attributes", "whole"]))
        if where == "whole":
            info = data.draw(JSON_VALUES)
        else:
            target = info if where == "top" else info[where]
            key = data.draw(st.sampled_from([*target, "extra"]) | NASTY)
            if data.draw(st.booleans()) and key in target:
                del target[key]
            else:
                target[key] = data.draw(JSON_VALUES)
        (root / "dataset.json").write_text(json.dumps(info))


MODES = st.sampled_from(["L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "1", "CMYK"])


@FUZZ
@given(data=st.data())
def test_mutated_image_files_keep_the_contract(pristine: Path, data: st.DataObject,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from PIL import Image

    with mutant(pristine, capsys, monkeypatch) as root:
        kind = data.draw(st.sampled_from(["images", "masks"]))
        victim = sorted((root / kind).iterdir())[data.draw(st.integers(0, 3))]
        how = data.draw(st.sampled_from(["bytes", "truncate", "mode", "size"]))
        if how == "bytes":
            victim.write_bytes(data.draw(st.binary(max_size=64)))
        elif how == "truncate":
            raw = victim.read_bytes()
            victim.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
        else:
            with Image.open(victim) as im:
                array = np.asarray(im)
            if how == "size":
                array = array[: data.draw(st.integers(1, array.shape[0])), : data.draw(st.integers(1, array.shape[1]))]
            mode = data.draw(MODES)
            picture = Image.fromarray(array).convert(mode)
            if mode in ("LA", "RGBA") and data.draw(st.booleans()):
                picture.putalpha(Image.fromarray((array > 0).astype(np.uint8) * 255))
            try:  # not every mode can be stored in every format: such draws are no input at all
                picture.save(victim, format=data.draw(st.sampled_from(["PNG", "TIFF", "BMP"])))
            except (OSError, KeyError):
                reject()


def _config_classes() -> list[type]:
    from sonosynth.augment import AugmentConfig
    from sonosynth.diffusion.config import TrainConfig
    from sonosynth.evaluation.generators import GeneratorRecipe
    from sonosynth.segmentation.common import SegmentationConfig
    from sonosynth.synthesis.generate import GenerateConfig

    return [TrainConfig, GeneratorRecipe, SegmentationConfig, AugmentConfig, GenerateConfig]


@FUZZ
@given(data=st.data())
def test_mutated_configs_load_or_name_their_file(data: st.DataObject) -> None:
    from sonosynth.settings import value_problems

    cls = data.draw(st.sampled_from(_config_classes()))
    names = [f.name for f in fields(cls)]
    mapping = {data.draw(st.sampled_from(names) | NASTY): data.draw(JSON_VALUES)
               for _ in range(data.draw(st.integers(1, 3)))}
    folder = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
    try:
        path = folder / "config.yaml"
        as_yaml = data.draw(st.booleans())
        text = yaml.safe_dump(mapping, allow_unicode=True) if as_yaml else json.dumps(mapping)
        path.write_bytes(text.encode(data.draw(ENCODINGS), errors="replace"))
        try:
            config = cls.from_yaml(path)
        except SonosynthError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc).strip(), str(exc)
        else:
            assert value_problems(config) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from factories import save_tiny_run

    return save_tiny_run(tmp_path_factory.mktemp("fuzz-run") / "run")


@settings(FUZZ, max_examples=int(os.environ.get("SONOSYNTH_FUZZ_EXAMPLES", "25")))
@given(data=st.data())
def test_mutated_model_folders_keep_the_contract(pristine: Path, tiny_run: Path, data: st.DataObject,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A run folder's JSON files (model_index.json, the network's and the scheduler's configs) mutated: `sample`
    loads it and generates, or refuses in one line naming the file or the model folder."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-run-"))
    try:
        run = shutil.copytree(tiny_run, folder / "run")
        victim = run / "model" / data.draw(st.sampled_from(["model_index.json", "unet/config.json",
                                                            "scheduler/scheduler_config.json"]))
        values: Any = json.loads(victim.read_text())
        if data.draw(st.booleans()):
            values = data.draw(JSON_VALUES)
        else:
            key = data.draw(st.sampled_from(sorted(values)) | NASTY)
            values[key] = data.draw(JSON_VALUES)
        victim.write_text(json.dumps(values))
        before = snapshot(run)
        out = folder / "synthetic"
        code, _, err = run_cli(["sample", run, "--source", pristine, "--out", out, "--steps", 2, "--split", "all",
                                "--device", "cpu"], capsys, monkeypatch)
        assert "Traceback" not in err and code in (0, 1), err
        if code == 1:
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and str(run) in errors[0], err
            assert not out.exists()
        assert snapshot(run) == before
    finally:
        shutil.rmtree(folder, ignore_errors=True)


OPTION_VALUES = st.one_of(st.integers(-(2**40), 2**40).map(str), st.floats().map(str), NASTY,
                          st.sampled_from(["0", "-1", "1e9", "0.5", "1.5", "", "x", "96x64", "0x0", "1,2"]))


@FUZZ
@given(data=st.data())
def test_option_values_keep_the_contract(pristine: Path, data: st.DataObject, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast commands with one option given a random value: they run, or refuse it (exit 1 with one `error:` line,
    or a usage error, exit 2), never a traceback; the input is untouched and a refused output is absent."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-options-"))
    try:
        root = shutil.copytree(pristine, folder / "data")
        out = folder / "out"
        command, option = data.draw(st.sampled_from([
            (["data", "phantom", out, "--n", "2"], "--size"), (["data", "phantom", out, "--size", "32"], "--n"),
            (["data", "phantom", out, "--n", "2", "--size", "32"], "--seed"),
            (["data", "split", root], "--val"), (["data", "split", root], "--test"),
            (["data", "split", root], "--seed"), (["data", "split", root], "--by"),
            (["data", "export", "nnunet", root, out], "--id"), (["data", "export", "nnunet", root, out], "--splits"),
            (["data", "check", root], "--no-hashes"),
        ]))
        value = data.draw(OPTION_VALUES)
        before = snapshot(root) if command[1] != "split" else None
        code, _, err = run_cli([*command, option, value], capsys, monkeypatch)
        assert "Traceback" not in err and code in (0, 1, 2), f"exit {code}: {err}"
        if code == 1:
            assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err
            assert not out.exists() or not any(out.iterdir())
        if before is not None:
            assert snapshot(root) == before
        if command[1] == "split" and code != 0:  # a refused split leaves the manifest as it was
            assert (root / "manifest.csv").read_bytes() == (pristine / "manifest.csv").read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
