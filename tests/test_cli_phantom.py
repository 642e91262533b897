import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from sonosynth.cli import app
from sonosynth.data.format import Dataset
from sonosynth.errors import SonosynthError

runner = CliRunner()


def test_phantom_command_writes_a_reproducible_dataset(tmp_path: Path):
    args = ["data", "phantom", "--domain", "cardiac", "--n", "3", "--size", "48x32", "--seed", "4"]
    result = runner.invoke(app, [*args, str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "wrote 3 cardiac phantom pairs" in result.output
    assert runner.invoke(app, [*args, str(tmp_path / "b")]).exit_code == 0
    a, b = Dataset.open(tmp_path / "a"), Dataset.open(tmp_path / "b")
    assert len(a) == 3 and a[0].image.shape == (32, 48)
    assert [r.image_sha256 for r in a.records] == [r.image_sha256 for r in b.records]
    assert a.info.provenance["seed"] == 4 and a.info.provenance["domain"] == "cardiac"


def test_phantom_command_overwrite_and_config(tmp_path: Path):
    out = tmp_path / "fh"
    assert runner.invoke(app, ["data", "phantom", "--n", "1", "--size", "32", str(out)]).exit_code == 0
    refused = runner.invoke(app, ["data", "phantom", "--n", "1", "--size", "32", str(out)])
    assert isinstance(refused.exception, SonosynthError) and "already exists" in str(refused.exception)
    config = tmp_path / "bright.yaml"
    config.write_text("acoustic:\n  gain_db: 0.0\ntissues:\n  brain:\n    echogenicity: 1.0\n")
    before = Dataset.open(out)[0].image
    result = runner.invoke(
        app, ["data", "phantom", "--n", "1", "--size", "32", "--config", str(config), "--overwrite", str(out)]
    )
    assert result.exit_code == 0, result.output
    after = Dataset.open(out)[0].image
    assert after.mean() > before.mean() + 20  # lower display gain_db = brighter image
    assert Dataset.open(out).info.provenance["config"]["acoustic"]["gain_db"] == 0.0


def test_phantom_command_rejects_bad_arguments(tmp_path: Path):
    for args, message in [
        (["--domain", "liver"], "unknown phantom domain 'liver'"),
        (["--n", "0"], "--n must be at least 1"),
        (["--size", "8"], "at least 16 pixels"),
        (["--size", "axb"], "WIDTHxHEIGHT"),
        (["--config", str(tmp_path / "missing.yaml")], "phantom config not found"),
    ]:
        result = runner.invoke(app, ["data", "phantom", *args, str(tmp_path / "out")])
        assert isinstance(result.exception, SonosynthError), (args, result.output)
        assert message in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_bad_domain_is_a_one_line_error_from_the_real_command(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "sonosynth", "data", "phantom", "--domain", "liver", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: unknown phantom domain 'liver' (choose from fetal-head, cardiac, breast)"
    ]


def test_help_lists_the_phantom_command():
    result = runner.invoke(app, ["data", "--help"])
    assert result.exit_code == 0 and "phantom" in result.output
