"""The bad-input corpus: broken datasets, run folders and configs, against every command that reads them.

Each case asserts what docs/reliability.md promises: exit code 1, one line `error: ...` (no traceback)
that names the offending file, and the output absent (or, for commands that change a dataset in
place, the dataset unchanged). Commands run in-process through `sonosynth.cli.main`, as the console
script does.
"""

from __future__ import annotations

import csv
import hashlib
import pickle
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from factories import save_tiny_run, write_cardiac_dataset, write_toy_dataset
from PIL import Image

from sonosynth.cli import main
from sonosynth.data.splits import SplitConfig, split_dataset

# ---- running a command ---------------------------------------------------------------------------------------


@dataclass
class Ran:
    code: int
    out: str
    err: str


def run(args: list[object], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Ran:
    """Exit code, stdout and stderr of `sonosynth ARGS`."""
    monkeypatch.setattr(sys, "argv", ["sonosynth", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main()
    printed = capsys.readouterr()
    return Ran(int(stopped.value.code or 0), printed.out, printed.err)


def assert_refused(ran: Ran, names: str, out: Path | None = None) -> None:
    err = ran.err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert ran.code == 1, err
    assert "Traceback" not in err and len(errors) == 1, err
    assert names in errors[0], f"{names!r} not named in: {errors[0]}"
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), f"{out} was written"
        assert not [p for p in out.parent.iterdir() if p.name.startswith(out.name + ".")], "a temporary was left"


# ---- broken datasets -------------------------------------------------------------------------------------------


def read_manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def write_manifest(root: Path, rows: list[dict[str, str]], fields: list[str] | None = None) -> None:
    fields = fields or list(rows[0])
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def target(rows: list[dict[str, str]]) -> int:
    """The row a fault breaks: the first training pair, which every command reads."""
    return next(i for i, row in enumerate(rows) if row["split"] == "train")


def replace_mask(root: Path, array: np.ndarray) -> str:
    """Overwrite the target's mask (keeping the manifest's hash right) and return its path."""
    rows = read_manifest(root)
    row = rows[target(rows)]
    path = root / row["mask"]
    Image.fromarray(array).save(path)
    row["mask_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    write_manifest(root, rows)
    return row["mask"]


def first_mask(root: Path) -> np.ndarray:
    rows = read_manifest(root)
    return np.asarray(Image.open(root / rows[target(rows)]["mask"]))


def truncated_png(root: Path) -> str:
    rows = read_manifest(root)
    image = root / rows[target(rows)]["image"]
    image.write_bytes(image.read_bytes()[:200])
    return rows[target(rows)]["image"]


def wrong_mask_size(root: Path) -> str:
    return replace_mask(root, np.zeros((20, 30), np.uint8))


def labels_out_of_range(root: Path) -> str:
    return replace_mask(root, (first_mask(root) > 0).astype(np.uint8) * 255)  # stored 0/255, not 0/1


def sixteen_bit_mask(root: Path) -> str:
    return replace_mask(root, (first_mask(root) > 0).astype(np.uint16) * 257)


def colour_mask(root: Path) -> str:
    mask = first_mask(root) > 0
    rgb = np.zeros((*mask.shape, 3), np.uint8)
    rgb[mask] = (255, 0, 0)  # a red region: a colour-coded mask, not label values
    return replace_mask(root, rgb)


def empty_dataset(root: Path) -> str:
    rows = read_manifest(root)
    write_manifest(root, [], list(rows[0]))
    return "manifest.csv"


def no_train_split(root: Path) -> str:
    write_manifest(root, [{**r, "split": "test"} for r in read_manifest(root)])
    return "split 'train'"


def missing_column(root: Path) -> str:
    rows = read_manifest(root)
    write_manifest(root, rows, [f for f in rows[0] if f != "mask"])
    return "manifest.csv"


def misspelt_column(root: Path) -> str:
    """`veiw` for the declared attribute `view`: read as an extra column, the attribute would be silently empty."""
    rows = [{("veiw" if k == "view" else k): v for k, v in r.items()} for r in read_manifest(root)]
    write_manifest(root, rows)
    return "manifest.csv"


def duplicate_ids(root: Path) -> str:
    rows = read_manifest(root)
    rows[target(rows) + 1]["id"] = rows[target(rows)]["id"]
    write_manifest(root, rows)
    return "manifest.csv"


def path_escaping(root: Path) -> str:
    rows = read_manifest(root)
    outside = root.parent / "elsewhere" / "images"
    outside.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / rows[target(rows)]["image"], outside / "x.png")
    rows[target(rows)]["image"] = "../elsewhere/images/x.png"
    write_manifest(root, rows)
    return "manifest.csv"


def unknown_attribute_value(root: Path) -> str:
    rows = read_manifest(root)
    rows[target(rows)]["view"] = "sideways"
    write_manifest(root, rows)
    return "sideways"


def hash_mismatch(root: Path) -> str:
    rows = read_manifest(root)
    rows[target(rows)]["image_sha256"] = "0" * 64
    write_manifest(root, rows)
    return rows[target(rows)]["image"]


DATASET_FAULTS: dict[str, Callable[[Path], str]] = {
    f.__name__: f for f in (truncated_png, wrong_mask_size, labels_out_of_range, sixteen_bit_mask, colour_mask,
                            empty_dataset, no_train_split, missing_column, misspelt_column, duplicate_ids,
                            path_escaping, unknown_attribute_value)
}
LAYOUT_FAULTS = {"empty_dataset", "missing_column", "misspelt_column", "duplicate_ids", "path_escaping"}


@pytest.fixture(scope="module")
def valid_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_toy_dataset(tmp_path_factory.mktemp("valid") / "toy", n=8)
    split_dataset(root, SplitConfig(val=0.25, test=0.25))
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_run(tmp_path_factory.mktemp("run") / "run", class_values={"view": ["a", "b"]})


@pytest.fixture(scope="module")
def tiny_segmenter(valid_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sonosynth.segmentation.common import SegmentationConfig
    from sonosynth.segmentation.train import train_from_folders

    config = SegmentationConfig(size=32, net="tiny", max_steps=1, val_every=1, batch_size=2)
    return train_from_folders(valid_dataset, tmp_path_factory.mktemp("seg") / "seg", config, progress=False)


def broken_copy(valid: Path, tmp_path: Path, fault: str) -> tuple[Path, str]:
    root = tmp_path / "data"
    shutil.copytree(valid, root)
    return root, DATASET_FAULTS[fault](root)


def commands_reading_a_dataset(data: Path, run_dir: Path, segmenter: Path, out: Path) -> dict[str, list[object]]:
    tiny = ["--size", "32", "--net-size", "tiny", "--max-steps", "1"]
    return {
        "data check": ["data", "check", data],
        "data export": ["data", "export", "nnunet", data, out, "--id", "7"],
        "train": ["train", data, "--out", out, *tiny, "--device", "cpu"],
        "segment train": ["segment", "train", data, "--out", out, *tiny],
        "sample": ["sample", run_dir, "--source", data, "--out", out, "--steps", "1", "--device", "cpu"],
        "generate": ["generate", run_dir, "--source", data, "--n", "2", "--out", out, "--steps", "1",
                     "--device", "cpu"],
        "evaluate downstream": ["evaluate", "downstream", "--real", data, "--out", out, "--k", "1", "--seeds", "1",
                                *tiny],
        "evaluate quality": ["evaluate", "quality", "--real", data, "--synthetic", data, "--out", out, "--size", "32"],
        "segment predict": ["segment", "predict", segmenter, data, "--out", out],
        "autoencoder train": ["autoencoder", "train", data, "--out", out, "--size", "32", "--patch-size", "16",
                              "--max-steps", "1", "--device", "cpu"],
    }


# Which commands meet which fault: `data check` reads everything; the others read the pairs they use.
NOT_MET = {
    ("data export", "no_train_split"),  # exports whatever splits there are
    ("data check", "no_train_split"),  # a dataset may be a test set
    ("evaluate downstream", "no_train_split"),  # reported by its own check below, as a missing split
    ("evaluate quality", "no_train_split"),  # compares whatever pairs there are
    # `segment predict` reads the images only: the masks and attributes are not its business
    *(("segment predict", f) for f in ("wrong_mask_size", "labels_out_of_range", "sixteen_bit_mask", "colour_mask",
                                       "no_train_split", "unknown_attribute_value")),
}


@pytest.mark.parametrize("fault", sorted(DATASET_FAULTS))
@pytest.mark.parametrize("command", ["data check", "data export", "train", "segment train", "sample", "generate",
                                     "evaluate downstream", "evaluate quality", "segment predict",
                                     "autoencoder train"])
def test_every_command_refuses_a_broken_dataset(valid_dataset, tiny_run, tiny_segmenter, tmp_path, capsys,
                                                monkeypatch, fault: str, command: str) -> None:
    if (command, fault) in NOT_MET:
        pytest.skip(f"`{command}` does not read what {fault} breaks")
    data, names = broken_copy(valid_dataset, tmp_path, fault)
    out = tmp_path / "out"
    manifest = (data / "manifest.csv").read_bytes()
    ran = run(commands_reading_a_dataset(data, tiny_run, tiny_segmenter, out)[command], capsys, monkeypatch)
    if command == "data check" and fault not in LAYOUT_FAULTS:  # a report of every problem, on stdout
        assert ran.code == 1 and "Traceback" not in ran.err and names in ran.out, ran.out + ran.err
    else:
        assert_refused(ran, names, out)
    assert (data / "manifest.csv").read_bytes() == manifest


@pytest.mark.parametrize("fault", sorted(LAYOUT_FAULTS))
def test_split_refuses_a_broken_manifest_and_leaves_it_unchanged(valid_dataset, tmp_path, capsys, monkeypatch,
                                                                 fault: str) -> None:
    data, names = broken_copy(valid_dataset, tmp_path, fault)
    manifest = (data / "manifest.csv").read_bytes()
    ran = run(["data", "split", data], capsys, monkeypatch)
    assert_refused(ran, names)
    assert (data / "manifest.csv").read_bytes() == manifest


def test_data_check_finds_a_hash_mismatch(valid_dataset, tmp_path, capsys, monkeypatch) -> None:
    """Only `data check` recomputes hashes (the other commands check what they read, not the hashes)."""
    data = tmp_path / "data"
    shutil.copytree(valid_dataset, data)
    image = hash_mismatch(data)
    monkeypatch.setattr(sys, "argv", ["sonosynth", "data", "check", str(data)])
    with pytest.raises(SystemExit) as stopped:
        main()
    printed = capsys.readouterr()
    assert stopped.value.code == 1 and "Traceback" not in printed.err
    assert image in printed.out + printed.err and "sha256" in printed.out + printed.err


# ---- broken run folders -------------------------------------------------------------------------------------


def unet_weights(run_dir: Path) -> Path:
    return next((run_dir / "model" / "unet").glob("*.safetensors"))


def missing_weights(run_dir: Path) -> str:
    unet_weights(run_dir).unlink()
    return "unet"


def mismatched_weights(run_dir: Path) -> str:
    from safetensors.torch import load_file, save_file

    path = unet_weights(run_dir)
    state = load_file(str(path))
    name = next(iter(state))
    state[name] = state[name][..., :1].contiguous().clone()  # one tensor of the wrong shape
    save_file(state, str(path))
    return "unet"


def weights_of_another_kind(run_dir: Path) -> str:
    other = save_tiny_run(run_dir.parent / "concat", kind="concat", class_values={"view": ["a", "b"]})
    shutil.copy(unet_weights(other), unet_weights(run_dir))
    return "unet"


def pickle_instead_of_safetensors(run_dir: Path) -> str:
    path = unet_weights(run_dir)
    path.unlink()
    marker = run_dir.parent / "unpickled"

    class Trap:  # unpickling this file would create `marker`
        def __reduce__(self):
            return (Path.touch, (marker,))

    (path.parent / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Trap()))
    return "unet"


RUN_FAULTS = {f.__name__: f for f in (missing_weights, mismatched_weights, weights_of_another_kind,
                                      pickle_instead_of_safetensors)}


@pytest.mark.parametrize("fault", sorted(RUN_FAULTS))
@pytest.mark.parametrize("command", ["sample", "generate", "edit"])
def test_every_generating_command_refuses_a_broken_run_folder(valid_dataset, tiny_run, tmp_path, capsys,
                                                              monkeypatch, fault: str, command: str) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    names = RUN_FAULTS[fault](run_dir)
    out = tmp_path / "out"
    first = read_manifest(valid_dataset)[0]
    args = {
        "sample": ["sample", run_dir, "--source", valid_dataset, "--out", out, "--steps", "1", "--device", "cpu"],
        "generate": ["generate", run_dir, "--source", valid_dataset, "--n", "2", "--out", out, "--steps", "1",
                     "--device", "cpu"],
        "edit": ["edit", run_dir, "--image", valid_dataset / first["image"], "--mask", valid_dataset / first["mask"],
                 "--edited-mask", valid_dataset / first["mask"], "--out", out, "--steps", "2", "--device", "cpu"],
    }[command]
    import torch

    unpickled: list[str] = []

    def never(*args, **kwargs):  # recorded: a loader may turn the error into its own
        unpickled.append(str(args[0]) if args else "?")
        raise RuntimeError("a pickle was about to be unpickled")

    monkeypatch.setattr(torch, "load", never)
    monkeypatch.setattr(pickle, "load", never)
    ran = run(args, capsys, monkeypatch)
    assert not unpickled, f"tried to unpickle {unpickled}"
    assert_refused(ran, str(run_dir), out)
    assert names in ran.err.splitlines()[-1]
    assert not (tmp_path / "unpickled").exists(), "a pickle was unpickled"


def test_segment_predict_refuses_a_segmenter_run_without_safetensors(valid_dataset, tmp_path, capsys,
                                                                     monkeypatch) -> None:
    seg = tmp_path / "seg"
    ran = run(["segment", "train", valid_dataset, "--out", seg, "--size", "32", "--net-size", "tiny",
                     "--max-steps", "1"], capsys, monkeypatch)
    assert ran.code == 0, ran.err
    (seg / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (seg / "model.pt").write_bytes(pickle.dumps(marker))
    out = tmp_path / "masks"
    ran = run(["segment", "predict", seg, valid_dataset, "--out", out], capsys, monkeypatch)
    assert_refused(ran, "model.safetensors", out)


# ---- broken configs ------------------------------------------------------------------------------------------


CONFIG_FAULTS = {
    "unknown key": ("max_step: 3\n", "unknown"),
    "wrong type": ("max_steps: many\n", "max_steps"),
}


@pytest.mark.parametrize("fault", sorted(CONFIG_FAULTS))
@pytest.mark.parametrize("command", ["train --config", "segment train --classical-config",
                                     "evaluate downstream --generator-per-k"])
def test_every_command_refuses_a_broken_config(valid_dataset, tmp_path, capsys, monkeypatch, fault: str,
                                               command: str) -> None:
    text, problem = CONFIG_FAULTS[fault]
    if command.startswith("segment"):
        text = text.replace("max_step: 3", "rotate: 3").replace("max_steps: many", "rotate_deg: many")
        problem = problem.replace("max_steps", "rotate_deg")
    if command.startswith("evaluate"):
        text = text.replace("max_step: 3", "train_step: 3").replace("max_steps: many", "train: {max_steps: many}")
    config = tmp_path / "settings.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    args = {
        "train --config": ["train", valid_dataset, "--out", out, "--config", config],
        "segment train --classical-config": ["segment", "train", valid_dataset, "--out", out, "--size", "32",
                                             "--net-size", "tiny", "--classical-config", config],
        "evaluate downstream --generator-per-k": ["evaluate", "downstream", "--real", valid_dataset, "--out", out,
                                                  "--generator-per-k", config, "--k", "1"],
    }[command]
    ran = run(args, capsys, monkeypatch)
    assert_refused(ran, str(config), out)
    assert problem in ran.err


@pytest.mark.parametrize("command", ["sample", "generate"])
def test_a_source_with_other_labels_than_the_model_is_refused(tiny_run, tmp_path, capsys, monkeypatch,
                                                              command: str) -> None:
    cardiac = write_cardiac_dataset(tmp_path / "cardiac", n=4)  # 4 labels; the model knows 2
    out = tmp_path / "out"
    extra = ["--n", "2"] if command == "generate" else []
    ran = run([command, tiny_run, "--source", cardiac, *extra, "--out", out, "--steps", "1", "--device", "cpu"],
              capsys, monkeypatch)
    assert_refused(ran, str(cardiac), out)
    assert "4 labels but the model" in ran.err


def test_an_unknown_attribute_value_at_generation_names_the_value(valid_dataset, tiny_run, tmp_path, capsys,
                                                                   monkeypatch) -> None:
    out = tmp_path / "out"
    ran = run(["generate", tiny_run, "--source", valid_dataset, "--n", "2", "--out", out, "--steps", "1",
                     "--attr", "view=sideways", "--device", "cpu"], capsys, monkeypatch)
    assert_refused(ran, "sideways", out)


def test_the_corpus_is_what_the_docs_list() -> None:
    """docs/reliability.md lists the corpus: keep them in step."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    for name in [*DATASET_FAULTS, "hash_mismatch", *RUN_FAULTS]:
        assert f"`{name}`" in text, f"docs/reliability.md does not list `{name}`"


@pytest.mark.parametrize("fault", ["truncated image", "edited mask of another size", "labels the model lacks"])
def test_edit_refuses_broken_files(valid_dataset, tiny_run, tmp_path, capsys, monkeypatch, fault: str) -> None:
    rows = read_manifest(valid_dataset)
    row = rows[target(rows)]
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    shutil.copy(valid_dataset / row["image"], image)
    shutil.copy(valid_dataset / row["mask"], mask)
    edited = tmp_path / "edited.png"
    shutil.copy(mask, edited)
    offending = {"truncated image": image, "edited mask of another size": edited, "labels the model lacks": edited}
    if fault == "truncated image":
        image.write_bytes(image.read_bytes()[:200])
    elif fault == "edited mask of another size":
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(edited)
    else:
        Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8) * 3).save(edited)  # label 3 of 0..1
    out = tmp_path / "out"
    ran = run(["edit", tiny_run, "--image", image, "--mask", mask, "--edited-mask", edited, "--out", out,
               "--steps", "2", "--device", "cpu"], capsys, monkeypatch)
    assert_refused(ran, str(offending[fault]), out)
