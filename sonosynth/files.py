"""Atomic writes: every file and folder sonosynth writes appears whole or not at all.

A file is written to a temporary name beside it and renamed into place (`atomic_path`); a folder is
built under a temporary name and moved into place at the end (`prepare_output` + `commit_folder`),
so an interrupted command never leaves a half-written output behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sonosynth.errors import DataError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, so writers that look at it still work) to write to;
    renamed onto `path` when the block succeeds, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer: two processes writing the same report (one per k) must not share a temporary file.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.part{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """A failed write (a full disk, a file-size limit, no permission) becomes one line naming `path`.

    safetensors reports its I/O errors as `SafetensorError`, not `OSError`: both are caught.
    """
    from safetensors import SafetensorError

    try:
        yield
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except SafetensorError as exc:
        raise DataError(f"{path}: cannot write ({exc})") from None


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any, indent: int = 2) -> Path:
    """JSON (numpy scalars included), written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def prepare_output(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing output folder unless overwrite; return the final path."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: output folder already exists (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def build_folder(out: str | Path, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` fills a folder beside `out`, which is then moved into place; a failed write leaves
    nothing (and a full disk is one line naming `out`)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(out):
            write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_folder(tmp, out)
    return out


def commit_folder(tmp: Path, out: Path) -> None:
    """Move a finished temporary folder into place, replacing an old one only at the last moment."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)
