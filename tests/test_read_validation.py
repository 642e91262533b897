"""Validation on read (docs/reliability.md): a dataset folder written by hand, by another tool or edited in a
spreadsheet is checked as strictly as one sonosynth wrote; numeric options and config fields have ranges.

Each broken input is refused by `data check` and by a command that would use it, with one `error:` line naming
the file and the input unchanged.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from factories import error_line, run_cli, write_toy_dataset

from sonosynth.data.format import Dataset


def rows_of(root: Path) -> tuple[list[str], list[list[str]]]:
    lines = list(csv.reader(io.StringIO((root / "manifest.csv").read_text())))
    return lines[0], lines[1:]


def write_rows(root: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8",
               bom: bool = False) -> None:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    (root / "manifest.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.getvalue().encode(encoding))


def set_cell(column: str, value: str, row: int = 0) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        header, rows = rows_of(root)
        rows[row][header.index(column)] = value
        write_rows(root, header, rows)
    return change


def change_info(**changes) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        info = json.loads((root / "dataset.json").read_text())
        (root / "dataset.json").write_text(json.dumps({**info, **changes}))
    return change


def ragged(extra: bool) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        header, rows = rows_of(root)
        rows[1] = [*rows[1], "surplus"] if extra else rows[1][:-2]
        write_rows(root, header, rows)
    return change


def latin1(root: Path) -> None:
    header, rows = rows_of(root)
    rows[0][header.index("subject")] = "Müller"
    write_rows(root, header, rows, encoding="latin-1")


def repeated_column(root: Path) -> None:
    header, rows = rows_of(root)
    write_rows(root, [*header, "subject"], [[*r, r[header.index("subject")]] for r in rows])


def repeated_json_key(root: Path) -> None:
    text = (root / "dataset.json").read_text()
    (root / "dataset.json").write_text(text.replace('"name": "toy",', '"name": "toy", "name": "other",', 1))


BROKEN: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (change, file named, words of the problem)
    "id climbing out": (set_cell("id", "../../x"), "manifest.csv", "invalid id"),
    "id with a separator": (set_cell("id", "a/b"), "manifest.csv", "invalid id"),
    "id with a control character": (set_cell("id", "a\x07b"), "manifest.csv", "invalid id"),
    "ids differing in case": (set_cell("id", "TOY_001"), "manifest.csv", "differs only in case"),
    "a row with a field too many": (ragged(True), "manifest.csv", "fields, the header has"),
    "a row with fields missing": (ragged(False), "manifest.csv", "fields, the header has"),
    "a column twice": (repeated_column, "manifest.csv", "appears twice"),
    "a manifest in latin-1": (latin1, "manifest.csv", "not UTF-8"),
    "spacing infinite": (set_cell("spacing_mm", "inf"), "manifest.csv", "not a length"),
    "spacing negative": (set_cell("spacing_mm", "-0.2"), "manifest.csv", "not a length"),
    "spacing zero": (set_cell("spacing_mm", "0"), "manifest.csv", "not a length"),
    "attribute named split": (change_info(attributes={"split": ["a", "b"], "view": ["a", "b"]}), "dataset.json",
                              "manifest column"),
    "labels as a list": (change_info(labels=["background", "head"]), "dataset.json", "must be an object"),
    "a negative label": (change_info(labels={"0": "background", "-1": "head"}), "dataset.json", "non-negative"),
    "two labels of one name": (change_info(labels={"0": "background", "1": "head", "2": "Head"}), "dataset.json",
                               "two labels"),
    "a label without a name": (change_info(labels={"0": "background", "1": None}), "dataset.json", "must have a name"),
    "attributes as a string": (change_info(attributes="view"), "dataset.json", "must be an object"),
    "attribute values as a string": (change_info(attributes={"view": "ab"}), "dataset.json", "must list"),
    "name a number": (change_info(name=3), "dataset.json", "must be a string"),
    "a key twice": (repeated_json_key, "dataset.json", "appears twice"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_dataset_is_refused_on_read(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    change, named, words = BROKEN[case]
    root = write_toy_dataset(tmp_path / "data")
    change(root)
    before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    for args in (["data", "check", root], ["data", "export", "nnunet", root, tmp_path / "raw", "--id", 7]):
        line = error_line(*run_cli(args, capsys, monkeypatch)[::2])
        assert str(root / named) in line and words in line, line
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()} == before
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_a_byte_order_mark_is_read_as_spreadsheets_write_it(tmp_path: Path) -> None:
    root = write_toy_dataset(tmp_path / "data")
    header, rows = rows_of(root)
    write_rows(root, header, rows, bom=True)
    (root / "dataset.json").write_bytes(b"\xef\xbb\xbf" + (root / "dataset.json").read_bytes())
    dataset = Dataset.open(root)
    assert [r.id for r in dataset.records] == [row[0] for row in rows]


OUT_OF_RANGE = [
    (["train", "{data}", "--out", "{tmp}/run", "--max-steps", 0], "max_steps"),
    (["train", "{data}", "--out", "{tmp}/run", "--learning-rate", "nan"], "learning_rate"),
    (["train", "{data}", "--out", "{tmp}/run", "--learning-rate", -1], "learning_rate must be a learning rate"),
    (["train", "{data}", "--out", "{tmp}/run", "--seed", -1], "seed"),
    (["train", "{data}", "--out", "{tmp}/run", "--size", 4], "size must be a size"),
    (["generate", "{run}", "--source", "{data}", "--out", "{tmp}/syn", "--n", 0], "n, steps"),
    (["generate", "{run}", "--source", "{data}", "--out", "{tmp}/syn", "--n", 2, "--guidance", "inf"],
     "guidance_scale"),
    (["sample", "{run}", "--source", "{data}", "--out", "{tmp}/syn", "--steps", 0], "steps"),
    (["segment", "train", "{data}", "--out", "{tmp}/seg", "--val-every", 0], "validation interval"),
    (["evaluate", "downstream", "--real", "{data}", "--out", "{tmp}/rep", "--seeds", 0], "seeds"),
    (["data", "split", "{data}", "--val", 1.5], "val"),
    (["edit", "{run}", "--image", "{data}/images/toy_000.png", "--mask", "{data}/masks/toy_000.png",
      "--edited-mask", "{data}/masks/toy_000.png", "--out", "{tmp}/edit", "--steps", -3], "steps"),
]


@pytest.mark.parametrize("args,field", OUT_OF_RANGE, ids=[" ".join(map(str, a[:2] + a[-2:])) for a, _ in OUT_OF_RANGE])
def test_values_out_of_range_are_one_line(args: list[object], field: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from factories import save_tiny_run

    data = write_toy_dataset(tmp_path / "data")
    run = save_tiny_run(tmp_path / "model")
    before = (data / "manifest.csv").read_bytes()
    filled = [str(a).format(data=data, tmp=tmp_path, run=run) for a in args]
    line = error_line(*run_cli(filled, capsys, monkeypatch)[::2])
    assert field in line, line
    assert (data / "manifest.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model"], "an output was left"


def test_a_config_file_out_of_range_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_toy_dataset(tmp_path / "data")
    config = tmp_path / "train.yaml"
    config.write_text("learning_rate: .nan\nbatch_size: 4\n")
    line = error_line(*run_cli(["train", data, "--config", config, "--out", tmp_path / "run"],
                               capsys, monkeypatch)[::2])
    assert str(config) in line and "learning_rate must be a finite number" in line, line
    config.write_bytes("# réglages\nseed: 1\n".encode("latin-1"))
    line = error_line(*run_cli(["train", data, "--config", config, "--out", tmp_path / "run"],
                               capsys, monkeypatch)[::2])
    assert str(config) in line and "not UTF-8" in line, line
    assert not (tmp_path / "run").exists()


# ---- across datasets: what a command mixes must fit, and must not hold what it is scored on ----------------------


def split_toy(root: Path) -> Path:
    from sonosynth.data.splits import SplitConfig, split_dataset

    split_dataset(root, SplitConfig(val=0.2, test=0.2, seed=0))
    return root


def extra_with(tmp_path: Path, real: Path, pick: str, same_id: bool) -> Path:
    """A dataset of synthetic-looking pairs plus one of `real`'s `pick` pairs (its image, under its id or not)."""
    from sonosynth.data.format import DatasetWriter, copy_pairs

    source = Dataset.open(real)
    leaked = source.subset(split=pick)
    leaked.records = leaked.records[:1]
    other = write_toy_dataset(tmp_path / "other", n=4, seed=9, prefix="synth")
    out = tmp_path / "extra"
    with DatasetWriter(out, source.info) as writer:
        copy_pairs(writer, Dataset.open(other))
        for sample in leaked:
            writer.add(sample.id if same_id else "innocent_name", sample.image, sample.mask, subject="x",
                       **sample.record.attributes)
    return out


@pytest.mark.parametrize("pick,same_id", [("test", True), ("test", False), ("val", False)])
def test_extra_pairs_may_not_hold_the_real_val_or_test_pairs(pick: str, same_id: bool, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = split_toy(write_toy_dataset(tmp_path / "real", n=10))
    extra = extra_with(tmp_path, real, pick, same_id)
    line = error_line(*run_cli(["segment", "train", real, "--synthetic", extra, "--out", tmp_path / "seg",
                                "--max-steps", 1, "--size", 32, "--net-size", "tiny"], capsys, monkeypatch)[::2])
    assert str(extra) in line and "validation or test pairs" in line, line
    assert not (tmp_path / "seg").exists()


def test_extra_pairs_must_name_their_labels_as_the_real_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = split_toy(write_toy_dataset(tmp_path / "real", n=10))
    extra = write_toy_dataset(tmp_path / "extra", n=4, seed=9, prefix="synth")
    change_info(labels={"0": "background", "1": "lesion"})(extra)  # label 1 means another structure
    for args in (["segment", "train", real, "--synthetic", extra, "--out", tmp_path / "seg"],
                 ["evaluate", "downstream", "--real", real, "--synthetic", extra, "--out", tmp_path / "rep"]):
        line = error_line(*run_cli(args, capsys, monkeypatch)[::2])
        assert str(extra / "dataset.json") in line and "same names" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra", "real"]


@pytest.mark.parametrize("args,hint", [
    (["train", "{data}", "--out", "{tmp}/run"], "--split all"),
    (["autoencoder", "train", "{data}", "--out", "{tmp}/ae", "--max-steps", "1"], "--split all"),
    (["segment", "train", "{data}", "--out", "{tmp}/seg"], "--auto-split"),
    (["evaluate", "downstream", "--real", "{data}", "--out", "{tmp}/rep", "--arms", "real"], "--auto-split"),
], ids=["train", "autoencoder train", "segment train", "evaluate downstream"])
def test_a_dataset_without_splits_stops_with_a_hint(args: list[str], hint: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_toy_dataset(tmp_path / "data")
    filled = [a.format(data=data, tmp=tmp_path) for a in args]
    line = error_line(*run_cli(filled, capsys, monkeypatch)[::2])
    assert "has no train/val/test split" in line and "sonosynth data split" in line and hint in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_the_app_does_not_start_on_a_dataset_data_check_rejects(tmp_path: Path) -> None:
    from factories import save_tiny_run

    from sonosynth.app.session import AppSession
    from sonosynth.errors import DataError

    data = write_toy_dataset(tmp_path / "data")
    first = data / "masks" / "toy_000.png"
    first.write_bytes(first.read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match="toy_000.png"):
        AppSession(save_tiny_run(tmp_path / "run"), data, device="cpu")


def test_more_pairs_than_the_disk_holds_are_refused_before_any_work(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from factories import save_tiny_run

    data = write_toy_dataset(tmp_path / "data")
    run = save_tiny_run(tmp_path / "model")
    line = error_line(*run_cli(["generate", run, "--source", data, "--out", tmp_path / "syn", "--n", 10**9,
                                "--mask-source", "deform"], capsys, monkeypatch)[::2])
    assert str(tmp_path / "syn") in line and "GB free" in line, line
    assert not (tmp_path / "syn").exists()


MODEL_FOLDER_FAULTS = {
    "model_index.json a list": ("model_index.json", None, [], "model_index.json: must be a JSON object"),
    "sample_size a word": ("model_index.json", "sample_size", "big", "'sample_size' must be an integer"),
    "class name a list": ("model_index.json", "_class_name", [], "'_class_name' must be a string"),
    "no train timesteps": ("scheduler/scheduler_config.json", "num_train_timesteps", 0, "num_train_timesteps"),
    "empty betas": ("scheduler/scheduler_config.json", "trained_betas", [], "noise schedule cannot sample"),
    "spacing none": ("scheduler/scheduler_config.json", "timestep_spacing", None, "noise schedule cannot sample"),
    "network option none": ("unet/config.json", "condition_encoder", None, "cannot load the model"),
}


@pytest.mark.parametrize("case", list(MODEL_FOLDER_FAULTS))
def test_a_model_folder_with_a_wrong_config_is_one_line(case: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from factories import save_tiny_run

    name, key, value, words = MODEL_FOLDER_FAULTS[case]
    data = write_toy_dataset(tmp_path / "data")
    run = save_tiny_run(tmp_path / "run")
    path = run / "model" / name
    saved = json.loads(path.read_text())
    path.write_text(json.dumps(value if key is None else {**saved, key: value}))
    line = error_line(*run_cli(["sample", run, "--source", data, "--out", tmp_path / "syn", "--steps", 2,
                                "--split", "all"], capsys, monkeypatch)[::2])
    assert str(run) in line and words in line, line
    assert not (tmp_path / "syn").exists()


@pytest.mark.parametrize("row", ["001_HC.png,-0.1,30", "001_HC.png,0.1,nan", "001_HC.png,0.1,30\n001_HC.png,0.2,31"])
def test_impossible_hc18_metadata_is_refused_on_import(row: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from sonosynth.data.imageio import write_png

    src = tmp_path / "hc18"
    (src / "training_set").mkdir(parents=True)
    write_png(src / "training_set" / "001_HC.png", np.full((120, 160), 90, np.uint8))
    outline = np.zeros((120, 160), np.uint8)
    outline[30:90, 40] = outline[30:90, 120] = outline[30, 40:121] = outline[90, 40:121] = 255
    write_png(src / "training_set" / "001_HC_Annotation.png", outline)
    csv_file = src / "training_set_pixel_size_and_HC.csv"
    csv_file.write_text(f"filename,pixel size(mm),head circumference (mm)\n{row}\n")
    line = error_line(*run_cli(["data", "import", "hc18", src, tmp_path / "out"], capsys, monkeypatch)[::2])
    assert str(csv_file) in line and ("not physically possible" in line or "listed twice" in line), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options,words", [
    (["--label-map", "255:1", "--label-map", "255:2"], "mapped to both 1 and 2"),
    (["--label-map", "255:1", "--spacing-mm", "-1"], "--spacing-mm -1"),
    (["--label-map", "255:1", "--spacing-mm", "nan"], "--spacing-mm nan"),
])
def test_contradictory_or_impossible_folder_import_options(options: list[str], words: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from sonosynth.data.imageio import write_png

    for folder in ("img", "lbl"):
        (tmp_path / "src" / folder).mkdir(parents=True)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 255
    write_png(tmp_path / "src" / "img" / "case_0.png", np.full((20, 30), 100, np.uint8))
    write_png(tmp_path / "src" / "lbl" / "case_0_mask.png", mask)
    line = error_line(*run_cli(["data", "import", "folder", tmp_path / "src", tmp_path / "out", "--images",
                                "img/*.png", "--masks", "lbl/{stem}_mask.png", *options], capsys, monkeypatch)[::2])
    assert words in line, line
    assert not (tmp_path / "out").exists()
