"""Mask deformation and the anatomy rules it must keep (connectivity, holes, nesting, in view)."""

from __future__ import annotations

import numpy as np
import pytest
from factories import cardiac_mask, head_mask

from sonosynth.synthesis.masks import BORDER, AnatomyRules, DeformConfig, contacts, deform_mask, enforce_topology


def test_rules_of_nested_mask_capture_nesting():
    mask = cardiac_mask(np.random.default_rng(0))
    rules = AnatomyRules.of(mask)
    assert rules.required == (1, 2, 3)
    assert rules.single_component == (1, 2, 3)
    assert 2 not in rules.hole_free and 1 in rules.hole_free  # the myocardium is a ring
    assert (0, 1) not in rules.allowed_contacts and (1, 2) in rules.allowed_contacts
    assert (BORDER, 1) not in rules.allowed_contacts
    assert rules.violations(mask) == []
    assert AnatomyRules.from_dict(rules.to_dict()) == rules


def test_violations_name_each_broken_rule():
    rules = AnatomyRules.of(cardiac_mask(np.random.default_rng(1)))
    broken = cardiac_mask(np.random.default_rng(1))
    broken[broken == 3] = 0  # atrium gone
    broken[0:3, 0:3] = 1  # LV island touching background and the border
    problems = "; ".join(rules.violations(broken))
    assert "label 3 missing" in problems
    assert "label 1 has 2 regions" in problems
    assert "labels 0 and 1 touch" in problems
    assert "label 1 touches the image border" in problems


def test_enforce_topology_keeps_largest_region_and_fills_holes():
    mask = head_mask(np.random.default_rng(2))
    rules = AnatomyRules.of(mask)
    damaged = mask.copy()
    damaged[1:3, 1:3] = 1  # stray island
    ys, xs = np.argwhere(mask == 1).mean(axis=0).astype(int)
    damaged[ys, xs] = 0  # hole
    repaired = enforce_topology(damaged, rules)
    assert np.array_equal(repaired, mask)


def test_contacts_see_diagonal_touches():
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 1], mask[2, 2] = 1, 2
    assert (1, 2) in contacts(mask)


@pytest.mark.parametrize("make", [cardiac_mask, head_mask], ids=["cardiac", "head"])
def test_deformed_masks_stay_valid_and_vary(make):
    rng = np.random.default_rng(3)
    source = make(rng)
    rules = AnatomyRules.of(source)
    results = [deform_mask(source, rng) for _ in range(8)]
    for result in results:
        assert result.mask.shape == source.shape and result.mask.dtype == np.uint8
        assert rules.violations(result.mask) == []
        assert set(np.unique(result.mask)) == set(np.unique(source))
    changed = [r for r in results if not r.fell_back]
    assert len(changed) >= 6
    assert all((r.mask != source).mean() > 0.005 for r in changed)
    assert len({r.mask.tobytes() for r in changed}) == len(changed)


def test_deform_is_reproducible_from_the_seed():
    source = cardiac_mask(np.random.default_rng(4))
    a = deform_mask(source, np.random.default_rng(7)).mask
    b = deform_mask(source, np.random.default_rng(7)).mask
    c = deform_mask(source, np.random.default_rng(8)).mask
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_deform_falls_back_to_the_source_when_every_draw_breaks_anatomy():
    # A one-pixel-thick ring around the LV cannot survive strong warps without leaks.
    source = np.zeros((32, 32), np.uint8)
    source[8:24, 8:24] = 2
    source[9:23, 9:23] = 1
    violent = DeformConfig(rotation_deg=0, scale_range=(1, 1), aspect_range=(1, 1), elastic_frac=0.3,
                           elastic_grid=8, max_tries=3)
    result = deform_mask(source, np.random.default_rng(0), violent)
    assert result.fell_back and result.attempts == 3
    assert np.array_equal(result.mask, source)


def test_deform_config_round_trips():
    config = DeformConfig(rotation_deg=5, scale_range=(0.9, 1.2))
    assert DeformConfig.from_dict(config.to_dict()) == config
