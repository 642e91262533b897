"""The config convention: dataclasses built strictly from mappings (YAML), with one-line errors."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sonosynth.errors import SonosynthError

T = TypeVar("T")


def strict_from_dict(cls: type[T], data: dict[str, Any], origin: str, what: str) -> T:
    """`cls(**data)`, refusing unknown keys; construction errors become a SonosynthError naming `origin`."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise SonosynthError(f"{origin}: unknown {what} fields {unknown}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise SonosynthError(f"{origin}: {exc}") from None


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file's top-level mapping, with a one-line error naming the file (and `what` it holds)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise SonosynthError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SonosynthError(f"{path}: invalid YAML{where} ({getattr(exc, 'problem', None) or 'syntax error'})") \
            from None
    if not isinstance(data, dict):
        raise SonosynthError(f"{path}: a {what} must be a YAML mapping")
    return data
