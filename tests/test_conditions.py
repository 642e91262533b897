"""Conditions naming a group of pairs (`--train-where`): parsing, matching, and the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import write_toy_dataset

from sonosynth.data.conditions import Condition
from sonosynth.data.format import Dataset, Record
from sonosynth.errors import DataError, SonosynthError


def record(**attributes: str) -> Record:
    return Record(id="r1", image="images/r1.png", mask="masks/r1.png", spacing_mm=0.15, attributes=attributes)


def test_numbers_compare_as_numbers_and_text_as_text() -> None:
    assert Condition.parse("hc_mm<150").matches(record(hc_mm="99.5"))  # as text, "99.5" > "150"
    assert not Condition.parse("hc_mm < 150").matches(record(hc_mm="150"))
    assert Condition.parse("hc_mm<=150").matches(record(hc_mm="150"))
    assert Condition.parse("hc_mm>=150").matches(record(hc_mm="150.0"))
    assert Condition.parse("spacing_mm>0.1").matches(record())
    assert Condition.parse("view=2CH").matches(record(view="2CH"))
    assert not Condition.parse("view!=2CH").matches(record(view="2CH"))
    assert not Condition.parse("view=2CH").matches(record())  # a pair without the value is not in the group
    assert str(Condition.parse(" view = 4CH ")) == "view=4CH"


def test_bad_conditions_say_what_is_wrong() -> None:
    with pytest.raises(SonosynthError, match="expected NAME<VALUE"):
        Condition.parse("hc_mm 150")
    with pytest.raises(SonosynthError, match="< needs a number, got 'big'"):
        Condition.parse("hc_mm<big")
    with pytest.raises(DataError, match="record r1: hc_mm 'n/a' is not a number"):
        Condition.parse("hc_mm<150").matches(record(hc_mm="n/a"))


def test_keep_filters_a_dataset_and_refuses_an_empty_or_unknown_group(tmp_path: Path) -> None:
    toy = Dataset.open(write_toy_dataset(tmp_path / "toy", n=6))
    kept = Condition.parse("view=a").keep(toy, "training")
    assert len(kept) == 3 and {r.attributes["view"] for r in kept.records} == {"a"}
    with pytest.raises(DataError, match="no training pair meets view=c"):
        Condition.parse("view=c").keep(toy, "training")
    with pytest.raises(DataError, match="no attribute 'phase' in dataset.json \\(attributes: view"):
        Condition.parse("phase=ED").keep(toy, "training")
