"""The output guard (docs/reliability.md): no command writes into what it reads, --overwrite included; an output
that appears while a command runs is kept; a killed run's temporary folder does not block the next run;
outputs are as readable as the user's umask allows.

Every case runs the real command in-process and compares every file of its inputs, byte for byte, before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from factories import error_line, run_cli, save_tiny_run, write_toy_dataset
from PIL import Image

from sonosynth.cli import main
from sonosynth.errors import DataError


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under `roots` with the hash of its bytes: an input must not change at all."""
    seen: dict[str, str] = {}
    for root in roots:
        paths = [root, *root.rglob("*")] if root.is_dir() else [root]
        for path in paths:
            seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return seen


def refused(args: list[object], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Run `sonosynth ARGS`; assert exit 1 with one `error:` line and no traceback; return that line."""
    code, _, err = run_cli(args, capsys, monkeypatch)
    return error_line(code, err)


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    data = write_toy_dataset(tmp_path / "data", n=6)
    run = save_tiny_run(tmp_path / "run")
    other = write_toy_dataset(tmp_path / "other", n=4, seed=1)
    info = json.loads((other / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps({**info, "name": "other"}))  # merge needs distinct names
    (tmp_path / "notes.txt").write_text("a file the user owns\n")
    return {"data": data, "run": run, "other": other, "file": tmp_path / "notes.txt", "tmp": tmp_path}


def _cases(w: dict[str, Path]) -> list[tuple[str, list[object]]]:
    data, run, other, file = w["data"], w["run"], w["other"], w["file"]
    image, mask = data / "images" / "first.png", data / "masks" / "first.png"  # need not exist: refused first
    return [
        ("sample into its source", ["sample", run, "--source", data, "--out", data, "--overwrite", "--steps", 2]),
        ("generate inside its source", ["generate", run, "--source", data, "--out", data / "synthetic",
                                        "--overwrite", "--steps", 2, "--n", 2]),
        ("generate into its model", ["generate", run, "--source", data, "--out", run, "--overwrite", "--n", 2]),
        ("generate into its segmenter", ["generate", run, "--source", data, "--segmenter", w["tmp"] / "seg",
                                         "--out", w["tmp"] / "seg" / "synthetic", "--n", 2]),
        ("predict into its images", ["segment", "predict", w["tmp"] / "seg", data, "--out", data, "--overwrite"]),
        ("predict into the segmenter", ["segment", "predict", run, data, "--out", run / "predictions"]),
        ("train into its dataset", ["train", data, "--out", data, "--max-steps", 1, "--device", "cpu"]),
        ("train inside its dataset", ["train", data, "--out", data / "run", "--max-steps", 1, "--device", "cpu"]),
        ("autoencoder into its data", ["autoencoder", "train", data, "--out", data / "ae", "--max-steps", 1]),
        ("segment train inside data", ["segment", "train", data, "--out", data / "seg", "--max-steps", 1]),
        ("segment train into --synthetic", ["segment", "train", data, "--synthetic", other, "--out", other,
                                        "--overwrite", "--max-steps", 1]),
        ("import over a file", ["data", "import", "nnunet", w["tmp"], file, "--overwrite"]),
        ("import into its source", ["data", "import", "hc18", data, data / "hc18", "--overwrite"]),
        ("import over its source's parent", ["data", "import", "hc18", data, w["tmp"], "--overwrite"]),
        ("export inside the dataset", ["data", "export", "nnunet", data, data, "--id", 501]),
        ("merge into an input", ["data", "merge", data, other, "--out", other, "--overwrite"]),
        ("downstream report into the data", ["evaluate", "downstream", "--real", data, "--out", data,
                                             "--report-only"]),
        ("downstream into the synthetic", ["evaluate", "downstream", "--real", data, "--synthetic", other,
                                           "--out", other / "report", "--k", 2, "--seeds", 1]),
        ("quality into the synthetic", ["evaluate", "quality", "--real", data, "--synthetic", other,
                                        "--out", other, "--overwrite"]),
        ("edit into the image's dataset", ["edit", run, "--image", image, "--mask", mask, "--edited-mask", mask,
                                           "--out", data, "--overwrite", "--steps", 2]),
        ("autoencoder measures over the manifest", ["autoencoder", "evaluate", run, data,
                                                    "--out", data / "manifest.csv"]),
    ]


CASES = [name for name, _ in _cases({k: Path(k) for k in ("data", "run", "other", "file", "tmp")})]


@pytest.mark.parametrize("case", CASES)
def test_no_command_writes_into_what_it_reads(case: str, world: dict[str, Path],
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    args = dict(_cases(world))[case]
    before = snapshot(world["tmp"])
    line = refused(args, capsys, monkeypatch)
    assert snapshot(world["tmp"]) == before, f"{case}: an input changed"
    assert any(word in line for word in ("input of this command", "is a file")), line


def test_a_symlink_to_an_input_is_the_input(world: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    link = world["tmp"] / "looks-new"
    link.symlink_to(world["data"], target_is_directory=True)
    before = snapshot(world["data"])
    line = refused(["sample", world["run"], "--source", world["data"], "--out", link, "--overwrite"],
                   capsys, monkeypatch)
    assert "input of this command" in line and str(link) in line
    assert snapshot(world["data"]) == before


def test_overwrite_still_replaces_an_earlier_output(world: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = world["tmp"] / "merged"
    for _ in range(2):
        monkeypatch.setattr(sys, "argv", ["sonosynth", "data", "merge", str(world["data"]), str(world["other"]),
                                          "--out", str(out), "--overwrite"])
        with pytest.raises(SystemExit) as stopped:
            main()
        assert stopped.value.code in (0, None), capsys.readouterr().err
    assert (out / "manifest.csv").is_file()


def test_an_output_that_appears_meanwhile_is_kept(tmp_path: Path) -> None:
    from sonosynth.files import output_folder, prepare_output

    out = prepare_output(tmp_path / "out")
    with pytest.raises(DataError, match="appeared while this command ran"), output_folder(out) as tmp:
        (tmp / "mine.txt").write_text("mine")
        out.mkdir()  # another writer, between the check and the rename
        (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "the refused temporary was left"
    with output_folder(out, overwrite=True) as tmp:
        (tmp / "mine.txt").write_text("mine")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_an_empty_folder_that_appears_is_kept_too(tmp_path: Path) -> None:
    from sonosynth.files import commit_folder, temporary_folder

    tmp = temporary_folder(tmp_path / "out")
    (tmp_path / "out").mkdir()  # a plain rename would silently replace an empty folder
    with pytest.raises(DataError, match="appeared"):
        commit_folder(tmp, tmp_path / "out", overwrite=False)


def test_a_killed_export_does_not_block_the_next(world: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    raw = world["tmp"] / "raw"
    raw.mkdir()
    # A run killed with SIGKILL leaves its temporary folder, named after its (now gone) process.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = raw / f"Dataset501_toy.tmp-{dead.stdout.strip()}-abcd1234"
    (stale / "imagesTr").mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", ["sonosynth", "data", "export", "nnunet", str(world["data"]), str(raw),
                                      "--id", "501", "--name", "toy"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code in (0, None), capsys.readouterr().err
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_toy"]


def test_a_running_writers_temporary_is_left_alone(tmp_path: Path) -> None:
    from sonosynth.files import temporary_folder

    alive = tmp_path / f"out.tmp-{os.getppid()}-abcd1234"
    alive.mkdir()
    temporary_folder(tmp_path / "out")
    assert alive.is_dir()


def test_outputs_follow_the_umask(world: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.umask(0o022)
    try:
        out = world["tmp"] / "merged"
        monkeypatch.setattr(sys, "argv", ["sonosynth", "data", "merge", str(world["data"]), str(world["other"]),
                                          "--out", str(out)])
        with pytest.raises(SystemExit):
            main()
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o755, oct(out.stat().st_mode)


def test_a_transparent_or_palette_mask_is_never_read_silently(tmp_path: Path) -> None:
    from sonosynth.data.imageio import read_label_map

    labels = np.zeros((8, 8), np.uint8)
    labels[2:6, 2:6] = 1
    hidden = np.stack([np.zeros_like(labels), labels * 255], axis=-1)  # labels drawn in the alpha channel
    Image.fromarray(hidden, mode="LA").save(tmp_path / "alpha.png")
    with pytest.raises(DataError, match="transparent"):
        read_label_map(tmp_path / "alpha.png")
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # label 1 shown red
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(read_label_map(tmp_path / "palette.png"), labels)


@pytest.mark.parametrize("out", [".", "..", "/"])
def test_no_output_replaces_the_current_folder_or_a_root(out: str, world: dict[str, Path],
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (world["tmp"] / "here").mkdir()
    monkeypatch.chdir(world["tmp"] / "here")
    before = snapshot(world["tmp"])
    line = refused(["data", "phantom", out, "--n", 1, "--overwrite"], capsys, monkeypatch)
    assert "current folder" in line
    assert snapshot(world["tmp"]) == before


def test_a_symlink_loop_is_one_line(world: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    loop = world["tmp"] / "loop"
    loop.symlink_to(loop)
    line = refused(["data", "phantom", loop / "out", "--n", 1], capsys, monkeypatch)
    assert str(loop) in line and "cannot be resolved" in line
