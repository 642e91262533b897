"""Progress bars that suit both a terminal and a log file.

On a terminal, `progress_bar` is tqdm as usual. Without one (a cluster job, `> log 2>&1`), tqdm's
carriage-return redraws would pile up into one enormous line, so the bar is printed as a plain line
every `LOG_INTERVAL_S` seconds, with the same information (count, rate, time left, postfix), and once
more when it finishes: a summary line. `SONOSYNTH_PROGRESS=lines|bar|off` overrides the choice.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm

LOG_INTERVAL_S = 10.0
_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LineWriter:
    """A text stream that turns tqdm's redraws into whole lines (no carriage returns, no cursor moves)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, text: str) -> int:
        for part in _CURSOR_MOVES.sub("", text).replace("\r", "\n").split("\n"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class LogLines(tqdm):
    """tqdm printing through `LineWriter`: a line per `mininterval` from `update`, none from postfix changes."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)


def progress_mode(stream: IO[str] | None = None) -> str:
    """`bar` on a terminal, `lines` otherwise, unless SONOSYNTH_PROGRESS says `lines`, `bar` or `off`."""
    chosen = os.environ.get("SONOSYNTH_PROGRESS", "").strip().lower()
    if chosen in ("lines", "bar", "off"):
        return chosen
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)` for the terminal, or as readable log lines when there is none."""
    mode = progress_mode()
    if mode == "off":
        kwargs["disable"] = True
    elif mode == "lines" and not kwargs.get("disable"):
        kwargs.update(file=LineWriter(kwargs.get("file") or sys.stderr), mininterval=LOG_INTERVAL_S,
                      dynamic_ncols=False, ncols=kwargs.get("ncols") or 100, ascii=True, leave=True)
        kwargs.pop("position", None)  # nested bars are separate lines anyway
        return LogLines(iterable, **kwargs)
    return tqdm(iterable, **kwargs)
