"""`sonosynth data import/export/split/check` through the real entry point, including every bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import ellipse_perimeter

from sonosynth.cli import main
from sonosynth.data.format import Dataset
from sonosynth.data.imageio import write_png


def run_cli(args: list, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["sonosynth", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def write_folder_source(root: Path, n: int = 4, seed: int = 0) -> Path:
    """img/case_i.png with lbl/case_i_mask.png (0/255)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    (root / "lbl").mkdir()
    for i in range(n):
        write_png(root / "img" / f"case_{i}.png", rng.integers(0, 256, (24, 32), dtype=np.uint8))
        mask = np.zeros((24, 32), np.uint8)
        mask[4:12, 6:20] = 255
        write_png(root / "lbl" / f"case_{i}_mask.png", mask)
    return root


FOLDER_ARGS = ["--images", "img/*.png", "--masks", "lbl/{stem}_mask.png", "--label-map", "255:1"]


def write_hc18_source(root: Path, annotation: np.ndarray | None) -> Path:
    (root / "training_set").mkdir(parents=True)
    write_png(root / "training_set" / "001_HC.png", np.full((120, 160), 90, np.uint8))
    if annotation is not None:
        write_png(root / "training_set" / "001_HC_Annotation.png", annotation)
    (root / "training_set_pixel_size_and_HC.csv").write_text(
        "filename,pixel size(mm),head circumference (mm)\n001_HC.png,0.1,30\n"
    )
    return root


def assert_clean_failure(code: int, err: str, names: str, out: Path) -> None:
    """Non-zero exit, one line naming the file, and nothing at (or beside) the output path."""
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert names in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f"{out.name}.tmp")]


# --- bad input: one test each -------------------------------------------------------------------


def test_truncated_image(tmp_path: Path, monkeypatch, capsys):
    src = write_folder_source(tmp_path / "src")
    data = (src / "img" / "case_2.png").read_bytes()
    (src / "img" / "case_2.png").write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(["data", "import", "folder", src, tmp_path / "out", *FOLDER_ARGS], monkeypatch, capsys)
    assert_clean_failure(code, err, f"{src / 'img' / 'case_2.png'}: unreadable or truncated image", tmp_path / "out")


def test_image_and_mask_of_different_sizes(tmp_path: Path, monkeypatch, capsys):
    src = write_folder_source(tmp_path / "src")
    write_png(src / "lbl" / "case_1_mask.png", np.zeros((20, 32), np.uint8))
    code, _, err = run_cli(["data", "import", "folder", src, tmp_path / "out", *FOLDER_ARGS], monkeypatch, capsys)
    assert_clean_failure(code, err, f"{src / 'lbl' / 'case_1_mask.png'}: mask size 32x20 differs", tmp_path / "out")


def test_mask_values_outside_declared_labels(tmp_path: Path, monkeypatch, capsys):
    src = write_folder_source(tmp_path / "src")
    mask = np.zeros((24, 32), np.uint8)
    mask[0, 0], mask[1, 1] = 255, 7
    write_png(src / "lbl" / "case_3_mask.png", mask)
    code, _, err = run_cli(["data", "import", "folder", src, tmp_path / "out", *FOLDER_ARGS], monkeypatch, capsys)
    assert_clean_failure(code, err, f"{src / 'lbl' / 'case_3_mask.png'}: mask values [7] outside", tmp_path / "out")


def test_outline_that_cannot_be_filled(tmp_path: Path, monkeypatch, capsys):
    annotation = np.zeros((120, 160), np.uint8)
    rr, cc = ellipse_perimeter(60, 80, 35, 55, shape=annotation.shape)
    annotation[rr, cc] = 255
    annotation[:, 80:] = 0  # an open arc
    src = write_hc18_source(tmp_path / "src", annotation)
    code, _, err = run_cli(["data", "import", "hc18", src, tmp_path / "out"], monkeypatch, capsys)
    name = src / "training_set" / "001_HC_Annotation.png"
    assert_clean_failure(code, err, f"{name}: annotation outline is not closed", tmp_path / "out")


def test_missing_pair(tmp_path: Path, monkeypatch, capsys):
    src = write_hc18_source(tmp_path / "src", annotation=None)
    code, _, err = run_cli(["data", "import", "hc18", src, tmp_path / "out"], monkeypatch, capsys)
    assert_clean_failure(code, err, f"{src / 'training_set' / '001_HC.png'}: missing pair", tmp_path / "out")


def test_duplicate_ids(tmp_path: Path, monkeypatch, capsys):
    src = tmp_path / "src"
    for site in ("site_a", "site_b"):  # the same file name in two folders gives the same id
        (src / site).mkdir(parents=True)
        write_png(src / site / "scan.png", np.zeros((8, 8), np.uint8))
        write_png(src / site / "scan_mask.png", np.zeros((8, 8), np.uint8))
    args = [
        "data",
        "import",
        "folder",
        src,
        tmp_path / "out",
        "--images",
        "*/scan.png",
        "--masks",
        "{dir}/{stem}_mask.png",
    ]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert_clean_failure(code, err, f"{src / 'site_b' / 'scan_mask.png'}: duplicate id 'scan'", tmp_path / "out")


def test_empty_source_folder(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["data", "import", "busi", tmp_path / "empty", tmp_path / "out"], monkeypatch, capsys)
    assert_clean_failure(code, err, f"{tmp_path / 'empty'}: empty source folder", tmp_path / "out")


def test_output_folder_that_already_exists(tmp_path: Path, monkeypatch, capsys):
    src = write_folder_source(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(["data", "import", "folder", src, out, *FOLDER_ARGS], monkeypatch, capsys)
    assert code == 1 and f"error: {out}: output folder already exists" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # untouched
    code, stdout, _ = run_cli(["data", "import", "folder", src, out, *FOLDER_ARGS, "--overwrite"], monkeypatch, capsys)
    assert code == 0 and "imported 4 pairs" in stdout
    assert len(Dataset.open(out)) == 4 and not (out / "keep.txt").exists()


def test_name_not_matching_the_name_pattern(tmp_path: Path, monkeypatch, capsys):
    src = write_folder_source(tmp_path / "src")
    write_png(src / "img" / "scan_9.png", np.zeros((24, 32), np.uint8))
    write_png(src / "lbl" / "scan_9_mask.png", np.zeros((24, 32), np.uint8))
    args = ["data", "import", "folder", src, tmp_path / "out", *FOLDER_ARGS, "--name-pattern", r"case_(?P<n>\d)"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    message = f"{src / 'img' / 'scan_9.png'}: name does not match --name-pattern"
    assert_clean_failure(code, err, message, tmp_path / "out")


def test_subject_pattern_and_name_pattern_together(tmp_path: Path, monkeypatch, capsys):
    src = write_folder_source(tmp_path / "src")
    patterns = ["--subject-pattern", r"(case)_", "--name-pattern", r"(?P<subject>case)_"]
    args = ["data", "import", "folder", src, tmp_path / "out", *FOLDER_ARGS, *patterns]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert_clean_failure(code, err, "--subject-pattern and --name-pattern: give one of them", tmp_path / "out")


def test_options_of_another_format_are_refused(tmp_path: Path, monkeypatch, capsys):
    src = write_folder_source(tmp_path / "src")
    code, _, err = run_cli(["data", "import", "busi", src, tmp_path / "out", "--images", "*.png"], monkeypatch, capsys)
    assert code == 1 and "--images only apply to the folder format" in err


# --- the happy path ----------------------------------------------------------------------------


def test_import_split_check_export_import(tmp_path: Path, monkeypatch, capsys):
    src = write_folder_source(tmp_path / "src", n=8)
    mask = np.zeros((24, 32), np.uint8)
    write_png(src / "lbl" / "case_7_mask.png", mask)  # an empty mask: allowed, reported
    ds = tmp_path / "ds"
    code, stdout, _ = run_cli(
        ["data", "import", "folder", src, ds, *FOLDER_ARGS, "--labels", "lesion", "--spacing-mm", "0.2"],
        monkeypatch,
        capsys,
    )
    assert code == 0 and "imported 8 pairs" in stdout and "empty masks (allowed, background only): 1: case_7" in stdout
    assert Dataset.open(ds).info.labels == {"0": "background", "1": "lesion"}

    code, stdout, _ = run_cli(
        ["data", "split", ds, "--val", "0.25", "--test", "0.25", "--seed", "3"], monkeypatch, capsys
    )
    assert code == 0 and stdout.strip() == "train: 4, val: 2, test: 2"
    assert {r.split for r in Dataset.open(ds).records} == {"train", "val", "test"}

    code, stdout, _ = run_cli(["data", "check", ds], monkeypatch, capsys)
    assert code == 0
    for expected in ("splits", "image sizes", "32 x 24", "lesion", "empty masks (background only): 1", "ok"):
        assert expected in stdout

    code, stdout, _ = run_cli(["data", "export", "nnunet", ds, tmp_path / "raw", "--id", "11"], monkeypatch, capsys)
    assert code == 0 and (tmp_path / "raw" / "Dataset011_ds" / "dataset.json").is_file()
    code, _, _ = run_cli(
        ["data", "import", "nnunet", tmp_path / "raw" / "Dataset011_ds", tmp_path / "back"], monkeypatch, capsys
    )
    assert code == 0
    original = {s.id: s for s in Dataset.open(ds)}
    for sample in Dataset.open(tmp_path / "back"):
        assert np.array_equal(sample.image, original[sample.id].image)
        assert np.array_equal(sample.mask, original[sample.id].mask)


def test_check_exits_non_zero_and_names_broken_files(toy_dataset: Path, monkeypatch, capsys):
    (toy_dataset / "images" / "toy_004.png").unlink()
    code, stdout, _ = run_cli(["data", "check", toy_dataset], monkeypatch, capsys)
    assert code == 1
    assert f"{toy_dataset / 'images' / 'toy_004.png'}: image file missing" in stdout


def test_export_into_existing_target_fails_cleanly(toy_dataset: Path, tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "raw" / "Dataset001_toy").mkdir(parents=True)
    code, _, err = run_cli(
        ["data", "export", "nnunet", toy_dataset, tmp_path / "raw", "--id", "1"], monkeypatch, capsys
    )
    assert code == 1 and "Dataset001_toy: output folder already exists" in err
    assert list((tmp_path / "raw" / "Dataset001_toy").iterdir()) == []
