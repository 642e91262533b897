"""One phantom case: draw an anatomy, simulate its B-mode image, return (image, mask, parameters)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sonosynth.errors import SonosynthError
from sonosynth.phantom.acoustics import AcousticConfig, Tissue, polar_points, simulate_polar
from sonosynth.phantom.anatomy import DEFAULT_TISSUES, DOMAINS, GENERATORS, Scene

MIN_SIZE = 16
MAX_SIZE = 4096  # a simulated scan's side; larger ones need more memory than a workstation has


@dataclass
class PhantomConfig:
    """Everything that shapes the phantom besides the seed; saved in dataset.json's provenance.

    `tissues` overrides the default acoustic properties by tissue name (see anatomy.DEFAULT_TISSUES);
    each case multiplies every echogenicity by exp(N(0, echo_jitter)) so cases differ in contrast.
    """

    acoustic: AcousticConfig = field(default_factory=AcousticConfig)
    tissues: dict[str, Tissue] = field(default_factory=dict)
    echo_jitter: float = 0.15

    def tissue(self, name: str) -> Tissue:
        if name in self.tissues:
            return self.tissues[name]
        if name in DEFAULT_TISSUES:
            return DEFAULT_TISSUES[name]
        raise SonosynthError(f"unknown tissue '{name}' (known: {sorted(DEFAULT_TISSUES)})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhantomConfig:
        try:
            acoustic = AcousticConfig(**dict(data.get("acoustic") or {}))
            tissues = {str(k): Tissue(**dict(v)) for k, v in dict(data.get("tissues") or {}).items()}
            unknown = [k for k in tissues if k not in DEFAULT_TISSUES]
            if unknown:
                raise SonosynthError(f"unknown tissues {unknown} in phantom config (known: {sorted(DEFAULT_TISSUES)})")
            return cls(acoustic=acoustic, tissues=tissues, echo_jitter=float(data.get("echo_jitter", 0.15)))
        except TypeError as exc:
            raise SonosynthError(f"invalid phantom config: {exc}") from None


def parse_size(size: int | str | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from 256, (256, 192) or the string 'WIDTHxHEIGHT' (like HC18's 800x540)."""
    try:
        if isinstance(size, str):
            parts = size.lower().split("x")
            if len(parts) == 1:
                height = width = int(parts[0])
            elif len(parts) == 2:
                width, height = int(parts[0]), int(parts[1])
            else:
                raise ValueError
        elif isinstance(size, (tuple, list)):
            height, width = (int(v) for v in size)
        else:
            height = width = int(size)
    except (TypeError, ValueError):
        raise SonosynthError(f"size must be an integer or WIDTHxHEIGHT (e.g. 256 or 96x64), got '{size}'") from None
    if min(height, width) < MIN_SIZE:
        raise SonosynthError(f"size must be at least {MIN_SIZE} pixels per side, got {width}x{height}")
    if max(height, width) > MAX_SIZE:
        raise SonosynthError(f"size must be at most {MAX_SIZE} pixels per side, got {width}x{height}")
    return height, width


def check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise SonosynthError(f"unknown phantom domain '{domain}' (choose from {', '.join(DOMAINS)})")
    return domain


def make_scene(domain: str, size: int | str | tuple[int, int], rng: np.random.Generator, **options: Any) -> Scene:
    height, width = parse_size(size)
    return GENERATORS[check_domain(domain)](height, width, rng, **options)


def render_scene(
    scene: Scene, rng: np.random.Generator, config: PhantomConfig | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Simulate a scene: uint8 image, aligned uint8 mask, and the parameters drawn (echogenicities included)."""
    config = config or PhantomConfig()
    jitter = np.exp(config.echo_jitter * rng.standard_normal(len(scene.tissue_names)))
    tissues = []
    params = dict(scene.params)
    for name, factor in zip(scene.tissue_names, jitter, strict=True):
        base = config.tissue(name)
        tissues.append(
            Tissue(base.echogenicity * float(factor), base.density, base.attenuation_db_cm_mhz, base.impedance_mrayl)
        )
        params[f"echo_{name}"] = round(20 * math.log10(max(base.echogenicity * float(factor), 1e-9)), 2)
    x, y = polar_points(scene.geometry, config.acoustic)
    image = simulate_polar(scene.tissue_map(x, y), tissues, scene.geometry, rng, config.acoustic)
    return image, scene.mask(config.acoustic), params


def generate_case(
    domain: str,
    size: int | str | tuple[int, int],
    rng: np.random.Generator,
    config: PhantomConfig | None = None,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(image uint8 HxW, mask uint8 HxW, params) for one random case of a domain.

    `options` go to the generator: `pathology` (breast), `phase` (cardiac), `pixel_size_mm` (fetal head).
    Params hold the drawn geometry, `spacing_mm` and the domain's attributes (pathology, view, phase).
    """
    scene = make_scene(domain, size, rng, **options)
    image, mask, params = render_scene(scene, rng, config)
    params.update(scene.attributes)
    params["spacing_mm"] = scene.spacing_mm
    return image, mask, params
