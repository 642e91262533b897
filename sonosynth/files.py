"""Outputs, once: every file and folder sonosynth writes appears whole or not at all, and never where the
user's inputs are.

A file is written to a temporary name beside it and renamed into place (`atomic_path`); a folder is
built under a temporary name and moved into place at the end (`prepare_output` + `output_folder`),
so an interrupted command never leaves a half-written output behind. `prepare_output` is also the
output guard every command goes through: an output may not be, contain or lie inside one of the
command's inputs (symlinks resolved), and may not be an existing file; `--overwrite` replaces an
earlier output, never an input. The final rename refuses a folder that appeared since the check
(another writer) unless overwriting; the temporary folder of a killed run is recognised by its
process id and removed by the next run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sonosynth.errors import DataError

TEMPORARY_MARK = ".tmp-"  # OUT.tmp-PID-XXXX: a folder being built for OUT by process PID


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
    except OSError as exc:  # a failed write() names no file: name the one being written, not its temporary
        if exc.filename not in (None, str(tmp), str(path)):
            raise
        raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def writing(path: str | Path, temporary: Path | None = None) -> Iterator[None]:
    """A failed write (a full disk, a file-size limit, no permission) becomes one line naming `path`.

    safetensors reports its I/O errors as `SafetensorError`, not `OSError`: both are caught. An error that
    names no file of its own (`File too large`) is given `path`; one that does keeps its own file name, said
    as the file it becomes when `temporary` is the folder being built for `path`."""
    from safetensors import SafetensorError

    try:
        yield
    except OSError as exc:
        written = exc.filename2 or exc.filename  # a failed copy names its source first, its destination second
        where = Path(written) if written else Path(path)
        if temporary is not None and where.is_relative_to(temporary):
            where = Path(path) / where.relative_to(temporary)
        raise DataError(f"{where}: cannot write ({exc.strerror or exc})") from None
    except SafetensorError as exc:
        raise DataError(f"{path}: cannot write ({exc})") from None


def read_text(path: str | Path, what: str = "file") -> str:
    """A text file the user gave (a manifest, dataset.json, a config): UTF-8, with or without the byte-order
    mark spreadsheet programs write; any other encoding is one line naming the file, not a traceback."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save the {what} "
                        "as UTF-8") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON file as UTF-8 (`read_text`); invalid JSON or a key given twice is one line naming the file."""
    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        repeated = next((k for k in keys if keys.count(k) > 1), None)
        if repeated is not None:
            raise DataError(f"{path}: key '{repeated}' appears twice in one object (which one is meant?)")
        return dict(pairs)

    try:
        return json.loads(read_text(path, what), object_pairs_hook=no_repeats)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from None


def read_json_object(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """`read_json` of a file whose documented shape is a JSON object (a record sonosynth wrote, maybe since edited
    or damaged): anything else is one line naming the file."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise DataError(f"{path}: {what} must be a JSON object, got {type(data).__name__}")
    return data


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, data: Any, indent: int = 2) -> Path:
    """JSON (numpy scalars included), written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


Inputs = Iterable["str | Path | None"]


def guard_output(out: str | Path, inputs: Inputs = (), file: bool = False) -> Path:
    """Refuse an output that is, contains or lies inside an input of the command (symlinks resolved), or, for
    an output folder, that is an existing file: no option makes a command write into what it reads. `file`:
    the output is one file (it may replace an earlier one)."""
    out = Path(out)
    if out.exists() and not out.is_dir() and not file:
        raise DataError(f"{out}: is a file, not an output folder (choose another output)")
    target = _resolved(out)
    if target == _resolved(Path.cwd()) or target in _resolved(Path.cwd()).parents or target == target.parent:
        raise DataError(f"{out}: is the current folder, holds it, or is a file system's root: no output replaces "
                        "that (choose a new folder for the output)")
    for source in inputs:
        if source is None or str(source) == "":
            continue
        src = _resolved(Path(source))
        if target == src:
            problem = "is an input of this command"
        elif src in target.parents:
            problem = "lies inside an input of this command"
        elif target in src.parents:
            problem = "contains an input of this command"
        else:
            continue
        raise DataError(f"{out}: {problem} ({source}); outputs never go into what a command reads, "
                        "--overwrite included: choose another output")
    return out


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise DataError(f"{path}: cannot be resolved ({exc})") from None


def prepare_output(out: str | Path, overwrite: bool = False, inputs: Inputs = ()) -> Path:
    """The output guard (`guard_output`), then: refuse an existing output folder unless overwrite; return
    the final path."""
    out = guard_output(out, inputs)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: output folder already exists (use --overwrite to replace it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{exc.filename or out.parent}: cannot create the output's folder "
                        f"({exc.strerror or exc})") from None
    return out


def require_space(out: Path, needed: int, what: str) -> None:
    """Refuse before the slow part when the disk holding `out` has less than `needed` bytes free (an upper
    bound: uncompressed pixels), so `--n 10000000` is one line, not a full disk hours later."""
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise DataError(f"{out}: {what} need up to {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free on that disk "
                        "(ask for fewer pairs, or write elsewhere)")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(out: Path) -> None:
    """Remove the temporary folders of `out` left by killed runs (their process is gone)."""
    if not out.parent.is_dir():
        return
    for tmp in out.parent.glob(f"{out.name}{TEMPORARY_MARK}*"):
        pid = tmp.name[len(out.name) + len(TEMPORARY_MARK):].split("-", 1)[0]
        if tmp.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def is_temporary(path: Path) -> bool:
    """A folder being built by `output_folder` (not an output of its own)."""
    return TEMPORARY_MARK in path.name


def temporary_folder(out: Path) -> Path:
    """A new folder beside `out` to build it in, named after this process; readable as the user's umask
    allows (not mkdtemp's 0700, so collaborators can read what is committed)."""
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}{TEMPORARY_MARK}{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


@contextmanager
def output_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build `out` in a temporary folder (yielded) and move it into place when the block succeeds; a failure
    leaves nothing, and a failed write (a full disk) is one line naming its file. Call `prepare_output` first."""
    out = Path(out)
    tmp = temporary_folder(out)
    try:
        with writing(out, tmp):
            yield tmp
        commit_folder(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_folder(out: str | Path, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` fills a (new, empty) folder beside `out`, which then replaces `out` (a run's own model
    folder)."""
    with output_folder(out, overwrite=True) as tmp:
        write(tmp)
    return Path(out)


def _rename_no_replace(src: Path, dst: Path) -> None:
    """Rename that fails with FileExistsError when `dst` exists (Linux renameat2 NOREPLACE; else a check)."""
    libc_name = ctypes.util.find_library("c")
    renameat2 = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None
    if renameat2 is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(dst))
        if code not in (errno.ENOSYS, errno.EINVAL):  # not supported here: fall back to the check
            raise OSError(code, os.strerror(code), str(dst))
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def commit_folder(tmp: Path, out: Path, overwrite: bool = True) -> None:
    """Move a finished temporary folder into place. Overwriting replaces an old one only at the last moment;
    otherwise an output that appeared since `prepare_output` (another writer) is kept and this one refused."""
    if not overwrite:
        try:
            _rename_no_replace(tmp, out)
        except FileExistsError:
            raise DataError(f"{out}: appeared while this command ran (another writer?); kept it, and wrote "
                            "nothing (use --overwrite to replace it)") from None
        return
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)
