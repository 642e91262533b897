"""What every importer needs: checking the source folder, pairing files, ids, and counting empty masks.

Importers differ in how they find pairs; the rules for bad input are the same for all of them, so
they live here: a one-line `DataError` naming the file, raised before anything appears at OUT.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from sonosynth.errors import DataError
from sonosynth.progress import progress_bar

T = TypeVar("T")
U = TypeVar("U")
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass
class ImportSummary:
    """What an import produced; empty masks are allowed but reported, `findings` are what the importer noticed."""

    out: Path
    pairs: int = 0
    empty_masks: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    def note(self, id: str, mask: np.ndarray) -> None:
        self.pairs += 1
        if not np.any(mask):
            self.empty_masks.append(id)

    def describe(self) -> str:
        empty = f", {len(self.empty_masks)} with an empty mask" if self.empty_masks else ""
        return "; ".join([f"imported {self.pairs} pairs into {self.out}{empty}", *self.findings])


def require_source_folder(src: str | Path) -> Path:
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: source folder not found")
    if not src.is_dir():
        raise DataError(f"{src}: source is not a folder")
    return src


def require_found(items: list[T], src: Path, what: str) -> list[T]:
    """An import that finds nothing is an error, not an empty dataset."""
    if not items:
        raise DataError(f"{src}: empty source folder, no {what} found")
    return items


def safe_id(text: str) -> str:
    """A manifest id from a file stem: 'benign (12)' -> 'benign_12'."""
    cleaned = _NOT_ID_CHARS.sub("_", text).strip("_.-")
    return cleaned or "case"


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    if image.shape != mask.shape:
        raise DataError(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from "
            f"image {image_path.name} size {image.shape[1]}x{image.shape[0]}"
        )


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A progress bar on stderr for long imports (silent when not a terminal is fine too)."""
    yield from progress_bar(items, desc=description, total=total, unit="pair", leave=False, dynamic_ncols=True)


def prefetch(load: Callable[[T], U], items: Sequence[T], workers: int = 2, ahead: int = 8) -> Iterator[U]:
    """`map(load, items)` in order, run by a few threads a bounded number of items ahead.

    Decoding PNGs, morphology and zlib release the GIL, so reading the next pairs overlaps with
    writing the current one; the writer itself stays single-threaded. An error raised by `load`
    surfaces at its item, in order, and pending work is cancelled.
    """
    if not items:
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[U]] = deque()
        position = 0
        try:
            while position < len(items) or pending:
                while position < len(items) and len(pending) < ahead:
                    pending.append(pool.submit(load, items[position]))
                    position += 1
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
