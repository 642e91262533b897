"""Prompts from a pair's attributes: `"ultrasound image of the {organ}, {pathology}"` and the like.

The template names attributes of the dataset (manifest columns) plus `{organ}` (dataset.json's `organ`,
else the dataset's name). A field without a value (an unknown pathology) is left
out with its comma-separated clause, so a prompt never reads "of the breast, " or "..., view".
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from sonosynth.errors import SonosynthError

DEFAULT_TEMPLATE = "ultrasound image of the {organ}, {pathology}"


def template_fields(template: str) -> list[str]:
    """The names a template refers to, in order ({organ} included)."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise SonosynthError(f"prompt template {template!r}: {exc}") from None
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise SonosynthError(f"prompt template {template!r}: fields must be attribute names, got {bad}")
    return names


def build_prompt(template: str, values: Mapping[str, str]) -> str:
    """The template filled from `values`; a comma-separated clause whose fields are all empty is left out."""
    clauses = []
    for clause in template.split(","):
        fields = template_fields(clause)
        if fields and not any(values.get(name) for name in fields):
            continue
        clauses.append(re.sub(r"\s+", " ", string.Formatter().vformat(clause, (), _Blank(values))).strip())
    return ", ".join(c for c in clauses if c)


def prompt_attributes(template: str, categorical: Mapping[str, object]) -> list[str]:
    """The dataset's categorical attributes a template uses (what the run records with the model)."""
    return [name for name in template_fields(template) if name != "organ" and name in categorical]


def dataset_organ(info: object) -> str:
    """What `{organ}` means for a dataset: dataset.json's `organ`, else its name."""
    return str(getattr(info, "organ", "") or getattr(info, "name", "") or "")


def prompts_for(template: str, organ: str, class_values: Mapping[str, Sequence[str]], class_labels: Any,
                batch: int) -> list[str]:
    """One prompt per row of attribute indices ((B, A), -1 unknown; None: all unknown), the attributes in
    `class_values` order (name -> values in index order)."""
    prompts = []
    for i in range(batch):
        values = {"organ": organ}
        for j, (name, allowed) in enumerate(class_values.items()):
            index = -1 if class_labels is None else int(class_labels[i, j])
            values[name] = allowed[index] if 0 <= index < len(allowed) else ""
        prompts.append(build_prompt(template, values))
    return prompts


class _Blank(dict):
    def __init__(self, values: Mapping[str, str]):
        super().__init__({k: "" if v is None else str(v) for k, v in values.items()})

    def __missing__(self, key: str) -> str:
        return ""
