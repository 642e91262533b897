"""The config convention: dataclasses built strictly from mappings (YAML), with one-line errors."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

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
