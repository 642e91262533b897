"""Write a phantom dataset in the project's layout; each case is reproducible from (seed, index) alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sonosynth.data.ellipse import head_circumference_mm
from sonosynth.data.format import DatasetInfo, DatasetWriter
from sonosynth.errors import SonosynthError
from sonosynth.phantom.anatomy import PATHOLOGIES
from sonosynth.phantom.cases import PhantomConfig, check_domain, generate_case, parse_size

DOMAIN_INFO: dict[str, dict] = {
    "fetal-head": {
        "organ": "fetal head",
        "labels": {"0": "background", "1": "head"},
        "attributes": {"hc_mm": None},
        "description": "Fetal head phantom (HC18-like): skull ring, brain, midline; mask = filled head ellipse.",
    },
    "cardiac": {
        "organ": "heart",
        "labels": {"0": "background", "1": "lv_endo", "2": "myocardium", "3": "left_atrium"},
        "attributes": {"view": ["4CH"], "phase": ["ED", "ES"]},
        "description": "Apical four-chamber phantom (CAMUS-like labels) from a phased-array sector.",
    },
    "breast": {
        "organ": "breast",
        "labels": {"0": "background", "1": "lesion"},
        "attributes": {"pathology": list(PATHOLOGIES)},
        "description": "Linear-probe breast phantom (BUSI-like): benign, malignant or no lesion.",
    },
}


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for case `index` of a dataset made with `seed`: any subset can be regenerated."""
    return np.random.default_rng([int(seed), int(index)])


def case_id(domain: str, index: int) -> str:
    return f"{domain.replace('-', '_')}_{index:05d}"


def dataset_info(domain: str, seed: int, size: tuple[int, int], config: PhantomConfig) -> DatasetInfo:
    spec = DOMAIN_INFO[check_domain(domain)]
    return DatasetInfo(
        name=f"phantom-{domain}",
        labels=dict(spec["labels"]),
        attributes=dict(spec["attributes"]),
        source="sonosynth phantom simulator (convolution model)",
        license="CC0-1.0",
        organ=spec["organ"],
        description=spec["description"],
        provenance={
            "generator": "sonosynth.phantom",
            "domain": domain,
            "seed": int(seed),
            "size_hw": list(size),
            "config": config.to_dict(),
        },
    )


def write_phantom_dataset(
    out: str | Path,
    domain: str,
    n: int,
    size: int | str | tuple[int, int],
    seed: int,
    overwrite: bool = False,
    pixel_size_mm: float | None = None,
    config: PhantomConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Simulate `n` cases and write them atomically to `out`; returns the dataset folder.

    Fetal-head cases record `hc_mm` measured from the mask's fitted ellipse at the case's pixel
    size; generator parameters go to extra manifest columns. `progress(1)` is called per case.
    """
    check_domain(domain)
    if int(n) < 1:
        raise SonosynthError(f"--n must be at least 1, got {n}")
    if pixel_size_mm is not None and (domain != "fetal-head" or pixel_size_mm <= 0):
        raise SonosynthError("pixel_size_mm must be positive and only applies to the fetal-head domain")
    height, width = parse_size(size)
    config = config or PhantomConfig()
    info = dataset_info(domain, seed, (height, width), config)
    options = {"pixel_size_mm": pixel_size_mm} if pixel_size_mm is not None else {}
    with DatasetWriter(out, info, overwrite=overwrite) as writer:
        for index in range(int(n)):
            image, mask, params = generate_case(domain, (height, width), case_rng(seed, index), config, **options)
            spacing = params.pop("spacing_mm")
            attributes = {k: params.pop(k) for k in info.attributes if k in params}
            if domain == "fetal-head":
                hc = head_circumference_mm(mask, spacing)
                attributes["hc_mm"] = "" if hc is None else f"{hc:.2f}"
            cid = case_id(domain, index)
            writer.add(
                cid,
                image,
                mask,
                subject=cid,
                spacing_mm=spacing,
                extra={"phantom_seed": seed, "phantom_index": index, **params},
                **attributes,
            )
            if progress is not None:
                progress(1)
    return Path(out)
