"""Conditions on a pair's record, e.g. `hc_mm<150` or `view=2CH`: how an experiment names a group of pairs.

A designed distribution shift trains on one group and tests on all (`evaluate downstream --train-where`).
The name is an attribute of `dataset.json` or the record field `spacing_mm`; `<`, `<=`, `>`, `>=` compare
numbers, `=` and `!=` compare text. A record without the value does not meet the condition.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from sonosynth.data.format import Dataset, Record
from sonosynth.errors import DataError, SonosynthError

FIELDS = ("spacing_mm",)  # record fields a condition may name besides the attributes
_NUMERIC: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}
_TEXT: dict[str, Callable[[str, str], bool]] = {"!=": operator.ne, "=": operator.eq}
_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|<|>|=)\s*(\S.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    name: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Condition:
        match = _PATTERN.match(text)
        if not match:
            raise SonosynthError(f"condition '{text}': expected NAME<VALUE, NAME>=VALUE, NAME=VALUE, ... "
                                 "(e.g. hc_mm<150 or view=2CH)")
        condition = cls(*match.groups())
        if condition.op in _NUMERIC:
            try:
                float(condition.value)
            except ValueError:
                raise SonosynthError(f"condition '{text}': {condition.op} needs a number, got "
                                     f"'{condition.value}'") from None
        return condition

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"

    def value_of(self, record: Record) -> str | None:
        value = record.spacing_mm if self.name in FIELDS else record.attributes.get(self.name)
        return None if value in (None, "") else str(value)

    def matches(self, record: Record) -> bool:
        value = self.value_of(record)
        if value is None:
            return False
        if self.op in _TEXT:
            return _TEXT[self.op](value, self.value)
        try:
            return _NUMERIC[self.op](float(value), float(self.value))
        except ValueError:
            raise DataError(f"record {record.id}: {self.name} '{value}' is not a number (condition {self})") from None

    def keep(self, dataset: Dataset, what: str) -> Dataset:
        """The pairs of `dataset` that meet the condition; none is an error naming the dataset."""
        if self.name not in FIELDS and self.name not in dataset.info.attributes:
            known = ", ".join(dataset.info.attributes) or "none"
            raise DataError(f"{dataset.root}: condition {self}: no attribute '{self.name}' in dataset.json "
                            f"(attributes: {known}; fields: {', '.join(FIELDS)})")
        kept = dataset.subset(ids=[r.id for r in dataset.records if self.matches(r)])
        if len(kept) == 0:
            raise DataError(f"{dataset.root}: no {what} pair meets {self}")
        return kept
