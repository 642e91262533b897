"""Anatomical rules a label map must obey, learnt from real masks and enforced on synthetic ones.

A generated mask is only useful if a segmenter could meet it in a real scan: each structure one
region, no spurious holes, and the same neighbourhood relations as real anatomy (the LV cavity
touches only the myocardium, a head that was fully in view stays in view). Rather than hard-coding
anatomy per domain, the rules are read off the source masks, so they hold for any dataset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

BORDER = -1
"""Pseudo-label for the outside of the image, so 'stays in view' is just another contact rule."""

_EIGHT = np.ones((3, 3), dtype=bool)


def contacts(mask: np.ndarray) -> frozenset[tuple[int, int]]:
    """Unordered pairs of labels that touch (8-neighbourhood), including BORDER for the image edge."""
    padded = np.pad(np.asarray(mask).astype(np.int64), 1, constant_values=BORDER)
    pairs: set[tuple[int, int]] = set()
    shifts = ((slice(None), slice(1, None), slice(None), slice(None, -1)),  # horizontal
              (slice(1, None), slice(None), slice(None, -1), slice(None)),  # vertical
              (slice(1, None), slice(1, None), slice(None, -1), slice(None, -1)),  # diagonal
              (slice(1, None), slice(None, -1), slice(None, -1), slice(1, None)))  # anti-diagonal
    for r0, c0, r1, c1 in shifts:
        a, b = padded[r0, c0], padded[r1, c1]
        differ = a != b
        if differ.any():
            lo, hi = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
            pairs.update(zip(lo.tolist(), hi.tolist(), strict=True))
    pairs.discard((BORDER, BORDER))
    return frozenset(pairs)


def component_count(region: np.ndarray) -> int:
    return int(ndimage.label(region, structure=_EIGHT)[1])


def has_holes(region: np.ndarray) -> bool:
    return bool((ndimage.binary_fill_holes(region) & ~region).any())


@dataclass(frozen=True)
class AnatomyRules:
    """What a valid mask of this anatomy looks like.

    - `required`: foreground labels that must be present;
    - `single_component`: labels that must form one connected region;
    - `hole_free`: labels whose region must have no holes (a ring such as the myocardium has one);
    - `allowed_contacts`: label pairs that may touch; any other pair among the present labels,
      background and BORDER must not (this is what keeps nested anatomy nested).
    """

    required: tuple[int, ...]
    single_component: tuple[int, ...]
    hole_free: tuple[int, ...]
    allowed_contacts: frozenset[tuple[int, int]]

    @classmethod
    def of(cls, mask: np.ndarray) -> AnatomyRules:
        """The rules one real mask satisfies."""
        mask = np.asarray(mask)
        labels = tuple(int(v) for v in np.unique(mask) if v != 0)
        return cls(
            required=labels,
            single_component=tuple(v for v in labels if component_count(mask == v) == 1),
            hole_free=tuple(v for v in labels if not has_holes(mask == v)),
            allowed_contacts=contacts(mask),
        )

    @classmethod
    def consensus(cls, rules: Sequence[AnatomyRules], min_fraction: float = 0.5,
                  contact_fraction: float = 0.1) -> AnatomyRules:
        """Rules most of a training set satisfies: a property holds if at least `min_fraction` of the
        masks have it; a contact is allowed if at least `contact_fraction` of the masks show it."""
        if not rules:
            raise ValueError("no masks to learn anatomy rules from")
        n = len(rules)

        def frequent(counter: Counter, fraction: float) -> list:
            return sorted(k for k, c in counter.items() if c >= fraction * n)

        return cls(
            required=tuple(frequent(Counter(v for r in rules for v in r.required), min_fraction)),
            single_component=tuple(frequent(Counter(v for r in rules for v in r.single_component), min_fraction)),
            hole_free=tuple(frequent(Counter(v for r in rules for v in r.hole_free), min_fraction)),
            allowed_contacts=frozenset(frequent(Counter(p for r in rules for p in r.allowed_contacts),
                                                contact_fraction)),
        )

    def violations(self, mask: np.ndarray) -> list[str]:
        """Human-readable reasons why `mask` breaks the rules (empty when valid)."""
        mask = np.asarray(mask)
        present = {int(v) for v in np.unique(mask)}
        problems = [f"label {v} missing" for v in self.required if v not in present]
        for v in self.single_component:
            if v in present and (n := component_count(mask == v)) != 1:
                problems.append(f"label {v} has {n} regions")
        for v in self.hole_free:
            if v in present and has_holes(mask == v):
                problems.append(f"label {v} has holes")
        for pair in sorted(contacts(mask) - self.allowed_contacts):
            problems.append(f"labels {pair[0]} and {pair[1]} touch" if BORDER not in pair
                            else f"label {max(pair)} touches the image border")
        return problems

    def to_dict(self) -> dict:
        return {
            "required": list(self.required),
            "single_component": list(self.single_component),
            "hole_free": list(self.hole_free),
            "allowed_contacts": [list(p) for p in sorted(self.allowed_contacts)],
        }

    @classmethod
    def from_dict(cls, data: dict) -> AnatomyRules:
        return cls(
            required=tuple(int(v) for v in data["required"]),
            single_component=tuple(int(v) for v in data["single_component"]),
            hole_free=tuple(int(v) for v in data["hole_free"]),
            allowed_contacts=frozenset((int(a), int(b)) for a, b in data["allowed_contacts"]),
        )


def enforce_topology(mask: np.ndarray, rules: AnatomyRules) -> np.ndarray:
    """Repair what resampling breaks: keep the largest region of single-region labels (stray
    islands take the label of the nearest kept pixel) and fill holes of hole-free labels."""
    out = np.asarray(mask).astype(np.uint8).copy()
    orphans = np.zeros(out.shape, dtype=bool)
    for v in rules.single_component:
        components, n = ndimage.label(out == v, structure=_EIGHT)
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            orphans |= (components > 0) & (components != int(np.argmax(sizes)) + 1)
    if orphans.any() and not orphans.all():
        _, (rows, cols) = ndimage.distance_transform_edt(orphans, return_indices=True)
        out[orphans] = out[rows[orphans], cols[orphans]]
    for v in rules.hole_free:
        region = out == v
        out[ndimage.binary_fill_holes(region) & ~region] = v
    return out
