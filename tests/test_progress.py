"""Progress without a terminal: readable lines every few seconds and a summary, never carriage returns."""

from __future__ import annotations

import io
from pathlib import Path

from factories import write_toy_dataset
from typer.testing import CliRunner

from sonosynth import progress
from sonosynth.cli import app


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_writer_turns_redraws_into_lines() -> None:
    out = io.StringIO()
    writer = progress.LineWriter(out)
    writer.write("\rtrain:  10%|#   | 1/10\r")
    writer.write("\x1b[A\rtrain:  20%|##  | 2/10   \n")
    assert out.getvalue() == "train:  10%|#   | 1/10\ntrain:  20%|##  | 2/10\n"


def test_mode_follows_the_terminal_unless_told(monkeypatch) -> None:
    monkeypatch.delenv("SONOSYNTH_PROGRESS", raising=False)
    assert progress.progress_mode(Terminal()) == "bar"
    assert progress.progress_mode(io.StringIO()) == "lines"
    monkeypatch.setenv("SONOSYNTH_PROGRESS", "off")
    assert progress.progress_mode(Terminal()) == "off"
    assert progress.progress_bar(range(3)).disable


def test_log_lines_at_an_interval_with_postfix_and_a_summary(monkeypatch) -> None:
    monkeypatch.delenv("SONOSYNTH_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 3600.0)  # no line from the interval in this test
    out = io.StringIO()
    bar = progress.progress_bar(total=500, desc="train", unit="step", file=out, leave=False)
    for step in range(500):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")  # would redraw on every step on a terminal
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 2  # the start, and the summary (kept even though leave=False was asked)
    assert lines[-1].startswith("train: 100%") and "500/500" in lines[-1] and "loss=0.0020" in lines[-1]


def test_a_command_run_into_a_log_writes_lines(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SONOSYNTH_PROGRESS", raising=False)
    data = write_toy_dataset(tmp_path / "toy", n=6)
    result = CliRunner().invoke(app, ["segment", "train", "--auto-split", str(data), "--size", "32",
                                      "--net-size", "tiny",
                                      "--max-steps", "30", "--val-every", "10", "--batch-size", "2",
                                      "--out", str(tmp_path / "seg")])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    summary = [line for line in result.output.splitlines() if line.startswith("segmenter:")]
    assert summary and "100%" in summary[-1] and "30/30" in summary[-1]
