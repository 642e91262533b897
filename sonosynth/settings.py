"""The config convention: every config is a dataclass deriving from `Config`.

- built strictly from a mapping (YAML): an unknown key is an error naming the file, nested configs
  are built the same way, lists become tuples where the default is a tuple;
- validated on construction (`__post_init__`), every problem a one-line `SonosynthError`;
- saved as YAML with `save` (atomic: written next to the target, then renamed).
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from sonosynth.errors import SonosynthError
from sonosynth.files import read_text, write_text_atomic

T = TypeVar("T")
C = TypeVar("C", bound="Config")

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")  # every training config's `mixed_precision` (accelerate's names)


class Config:
    """Base of sonosynth's config dataclasses: strict `from_dict`/`from_yaml`, `to_dict`/`to_yaml`, `save`."""

    what: ClassVar[str] = "config"  # how errors name it: "unknown <what> fields [...]"
    # Fields renamed to the glossary's word (docs/glossary.md), old name -> new name: a file written before the
    # rename (a run's config.yaml, a checkpoint's state, a recipe) still reads; only the new name is written.
    renamed: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None, origin: str | None = None) -> C:
        origin = origin or cls.what
        data = cls.current_names(data or {}, origin)
        hints = _type_hints(cls)
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                continue
            value, nested = data[f.name], _config_class(hints.get(f.name))
            if nested is not None and isinstance(value, Mapping):
                data[f.name] = nested.from_dict(value, f"{origin}: {f.name}")
            elif isinstance(value, list) and (_wants_tuple(hints.get(f.name))
                                              or f.default is not MISSING and isinstance(f.default, tuple)):
                data[f.name] = tuple(value)
        return strict_from_dict(cls, data, origin, cls.what)

    @classmethod
    def current_names(cls, data: Mapping[str, Any], origin: str | None = None) -> dict[str, Any]:
        """`data` with the old names of renamed fields (`renamed`) read as today's; both at once is an error."""
        both = sorted(old for old, new in cls.renamed.items() if old in data and new in data)
        if both:
            raise SonosynthError(f"{origin or cls.what}: {', '.join(both)} is the old name of "
                                 f"{', '.join(cls.renamed[b] for b in both)}: give one of them")
        return {cls.renamed.get(k, k): v for k, v in data.items()}

    def checked(self: C, origin: str = "command line") -> C:
        """This config, its values checked against `FIELD_RANGES` (as `from_dict` does): for configs a command
        builds from its options."""
        problems = value_problems(self)
        if problems:
            raise SonosynthError(f"{origin}: " + "; ".join(problems))
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(read_yaml_mapping(path, cls.what), origin=str(path))

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, self.to_yaml())


def without_new_defaults(current: dict[str, Any], recorded: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`current` less the fields `recorded` lacks that sit at their default: a record written before a field
    existed describes a run with that field at its default, so it still matches (in nested sections too)."""
    kept = {}
    for key, value in current.items():
        old, default = recorded.get(key), defaults.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and isinstance(default, dict):
            kept[key] = without_new_defaults(value, old, default)
        elif key in recorded or value != default:
            kept[key] = value
    return kept


def at_least_one(config: Any, names: tuple[str, ...]) -> list[str]:
    """Problems for the fields among `names` that are below 1 (counts, sizes, intervals)."""
    return [f"{name} must be at least 1" for name in names if int(getattr(config, name)) < 1]


def patch_problems(patch_size: int | None, size: int) -> list[str]:
    if patch_size is not None and not 0 < patch_size <= size:
        return [f"patch_size must be between 1 and size ({size})"]
    return []


def strict_from_dict(cls: type[T], data: dict[str, Any], origin: str, what: str) -> T:
    """`cls(**data)`, refusing unknown keys; construction errors become a SonosynthError naming `origin`."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise SonosynthError(f"{origin}: unknown {what} fields {unknown}")
    problems = _coerce_scalars(data, _type_hints(cls))
    if problems:
        raise SonosynthError(f"{origin}: " + "; ".join(problems))
    try:
        built = cls(**data)
    except SonosynthError as exc:
        message = str(exc)
        raise SonosynthError(message if message.startswith(origin) else f"{origin}: {message}") from None
    except (TypeError, ValueError) as exc:
        raise SonosynthError(f"{origin}: {exc}") from None
    problems = value_problems(built)
    if problems:
        raise SonosynthError(f"{origin}: " + "; ".join(problems))
    return built


# The range of every numeric config field, by its name (one name per concept across configs, CLI and docs:
# docs/reliability.md lists them). A float is also always finite. Checked whenever a config is built from a
# file or the command line (`strict_from_dict`), so a value out of range is one line, not a crash mid-run.
_COUNTS = ("batch_size", "max_steps", "steps", "sample_steps", "train_steps", "num_train_timesteps", "stage1_steps",
           "stage2_steps", "val_every", "patience", "checkpoint_every", "sample_every", "n", "seeds", "max_pairs",
           "kid_subsets", "kid_subset_size", "grad_accumulation", "segment_steps", "n_cases", "max_tries",
           "jump_length", "jump_n_sample", "k", "hard_candidates")
_PIXELS = ("size", "patch_size", "stage2_size", "memorisation_size")
_NON_NEGATIVE = ("warmup_steps", "weight_decay", "latent_views", "num_workers", "keep_checkpoints", "num_samples",
                 "margin_px", "hc_widen", "size_widen", "hc_range_widen", "size_range_widen", "adversarial_start",
                 "n_deform", "n_shape", "conditioning_scale", "autoencoder_steps", "autoencoder_decoder_steps",
                 "filter_segmenter_steps", "max_grad_norm", "min_steps")
_UNIT = ("probability", "ema_decay", "val", "test", "selection", "synthetic_ratio", "strength", "cond_drop_prob",
         "variance_kept", "filter_dice", "eta", "unannotated_fraction")
FIELD_RANGES: dict[str, tuple[float, float, str]] = {
    **{name: (1, 10**9, "a count of at least 1") for name in _COUNTS},
    **{name: (8, 8192, "a size in pixels, 8 to 8192") for name in _PIXELS},
    **{name: (0, float("inf"), "not negative") for name in _NON_NEGATIVE},
    **{name: (0, 1, "within [0, 1]") for name in _UNIT},
    "seed": (0, 2**63 - 1, "an integer from 0 to 2**63 - 1"),
    "learning_rate": (0, 10, "a learning rate from 0 (frozen weights) to 10"),
    "guidance_scale": (0, 100, "within [0, 100]"),
}


def value_problems(config: Any) -> list[str]:
    """Fields of a config (and of the configs inside it) outside `FIELD_RANGES`, or floats that are not finite."""
    problems = []
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, Config):
            problems += [f"{f.name}.{p}" for p in value_problems(value)]
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{f.name} must be a finite number, got {value}")
            continue
        rule = FIELD_RANGES.get(f.name) or (FIELD_RANGES["probability"] if f.name.endswith("_prob") else None)
        if rule is not None and not rule[0] <= value <= rule[1]:
            problems.append(f"{f.name} must be {rule[2]}, got {value}")
    return problems


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce_scalars(data: dict[str, Any], hints: dict[str, Any]) -> list[str]:
    """Check values of plain scalar fields (bool, int, float, str, or one of them | None) against their type.

    YAML reads `5e-4` as a string (YAML 1.1 floats need a dot), so a float field takes a number written
    that way; otherwise a value of the wrong type is a problem naming the field, not a crash later on."""
    problems = []
    for name, value in data.items():
        kinds = [a for a in _alternatives(hints.get(name)) if a is not type(None)]
        if len(kinds) != 1 or kinds[0] not in _SCALARS or (value is None and type(None) in _alternatives(hints[name])):
            continue
        kind = kinds[0]
        if kind is float and isinstance(value, str) and _is_float(value):
            data[name] = value = float(value)
        if kind is float:
            fits = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            fits = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not fits:
            problems.append(f"{name} must be {_SCALARS[kind]}, got {value!r}")
    return problems


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file's top-level mapping, with a one-line error naming the file (and `what` it holds)."""
    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path, what)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SonosynthError(f"{path}: invalid YAML{where} ({getattr(exc, 'problem', None) or 'syntax error'})") \
            from None
    if not isinstance(data, dict):
        raise SonosynthError(f"{path}: a {what} must be a YAML mapping")
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation only importable under TYPE_CHECKING: no nesting there
        return {}


def _alternatives(hint: Any) -> tuple[Any, ...]:
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return typing.get_args(hint) if union else (hint,)


def _wants_tuple(hint: Any) -> bool:
    return any(a is tuple or typing.get_origin(a) is tuple for a in _alternatives(hint))


def _config_class(hint: Any) -> type[Config] | None:
    for candidate in _alternatives(hint):
        if isinstance(candidate, type) and issubclass(candidate, Config):
            return candidate
    return None
