"""B-mode image formation by the convolution model (fast ultrasound simulation, e.g. Gao et al. 2009).

A tissue map sampled on the probe's own grid (depth x scan line; polar for sector probes) becomes
random point scatterers whose amplitude and density depend on the tissue. Each echo is weighted by
the two-way attenuation and boundary losses accumulated along its beam (which makes shadows behind
bone and enhancement behind fluid, because time-gain compensation only undoes soft-tissue loss),
specular reflectors are added where the acoustic impedance changes along the beam, and the whole
map is convolved with a depth-dependent point-spread function (Gaussian-modulated cosine axially,
Gaussian beam laterally). The analytic-signal envelope is log-compressed to the display's dynamic
range and scan-converted to the Cartesian image; outside the fan the image is exactly black.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from sonosynth.errors import SonosynthError
from sonosynth.settings import Config

PROBE_KINDS = ("sector", "linear")


@dataclass(frozen=True)
class Tissue:
    """Acoustic properties of one tissue type.

    `echogenicity` is the mean backscatter amplitude (1.0 = reference soft tissue at 0 dB);
    `density` is the fraction of grid samples holding a scatterer (>= ~0.5 gives fully developed
    speckle; low values give the sparse, spotty look of fluid); attenuation in dB/(cm MHz);
    impedance in MRayl decides how bright the specular boundary to the neighbouring tissue is.
    """

    echogenicity: float = 1.0
    density: float = 1.0
    attenuation_db_cm_mhz: float = 0.54
    impedance_mrayl: float = 1.63


@dataclass(frozen=True)
class ProbeGeometry:
    """Where the image comes from: a sector (curvilinear/phased) or a linear probe.

    Pixel coordinates are those of the output image: x to the right, y down, pixel centres at
    integers. A sector's beams start at the apex (x = width/2, y = apex_y; apex_y < 0 is a virtual
    apex above the image, as for curvilinear probes) and image radii r_min..r_max within
    +-half_angle_deg of vertical. A linear probe images the whole frame with vertical beams.
    """

    kind: str
    height: int
    width: int
    depth_cm: float
    frequency_mhz: float
    half_angle_deg: float = 0.0
    apex_y: float = 0.0
    r_min: float = 0.0
    r_max: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise SonosynthError(f"probe kind must be one of {PROBE_KINDS}, got '{self.kind}'")
        if self.height < 2 or self.width < 2:
            raise SonosynthError(f"image size must be at least 2x2, got {self.width}x{self.height}")
        if self.kind == "sector" and not (0 < self.half_angle_deg < 90 and 0 <= self.r_min < self.r_max):
            raise SonosynthError("sector geometry needs 0 < half_angle_deg < 90 and 0 <= r_min < r_max")

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def layout(self) -> tuple[str, int, int, float, float, float, float]:
        """What the sampling grids depend on (not depth_cm or frequency): the cache key."""
        return (self.kind, self.height, self.width, self.half_angle_deg, self.apex_y, self.r_min, self.r_max)


def sector_geometry(
    height: int,
    width: int,
    *,
    half_angle_deg: float,
    apex_y: float,
    r_max: float | None = None,
    depth_cm: float,
    frequency_mhz: float,
) -> ProbeGeometry:
    """A fan whose top arc starts at the image's top row (r_min = -apex_y, or 0 for a phased apex)."""
    r_min = max(0.0, -apex_y)
    r_max = float(height - 1 - apex_y) if r_max is None else float(r_max)
    return ProbeGeometry("sector", height, width, depth_cm, frequency_mhz, half_angle_deg, apex_y, r_min, r_max)


def linear_geometry(height: int, width: int, *, depth_cm: float, frequency_mhz: float) -> ProbeGeometry:
    return ProbeGeometry("linear", height, width, depth_cm, frequency_mhz)


@dataclass
class AcousticConfig(Config):
    """Scanner and display settings (pixel units refer to the output image).

    `gain_db` is the echo level (relative to reference tissue) shown as white; `dynamic_range_db`
    below it maps to black. `tgc_db_cm_mhz` is the attenuation that time-gain compensation undoes.
    `texture_strength` modulates echogenicity with a smooth random field (tissue heterogeneity on
    top of speckle); set it to 0 to measure pure speckle.
    """

    what: ClassVar[str] = "acoustic"

    axial_sigma_px: float = 1.5
    wavelength_px: float = 3.5
    lateral_sigma_px: float = 1.3
    focus_depth: float = 0.5
    rayleigh_length: float = 0.35
    depth_samples_per_px: float = 1.0
    line_spacing_px: float = 1.4
    tgc_db_cm_mhz: float = 0.5
    specular_gain: float = 6.0
    noise_db: float = -38.0
    gain_db: float = 22.0
    dynamic_range_db: float = 48.0
    texture_strength: float = 0.3
    texture_scale_px: float = 6.0

    def __post_init__(self) -> None:
        if (
            self.dynamic_range_db <= 0
            or self.wavelength_px < 2.05
            or min(self.axial_sigma_px, self.lateral_sigma_px) <= 0
        ):
            raise SonosynthError(
                "acoustic config needs dynamic_range_db > 0, wavelength_px > 2 (Nyquist) and positive PSF widths"
            )


@dataclass(frozen=True)
class _Grid:
    """The simulation grid (n_depth x n_lines) and where each sample lies in the image."""

    n_depth: int
    n_lines: int
    radii: np.ndarray  # (n_depth,) distance along the beam from the apex (sector) or top (linear), px
    angles: np.ndarray  # (n_lines,) radians from vertical (sector) or x positions (linear)
    line_spacing: np.ndarray  # (n_depth,) lateral distance between neighbouring lines at each depth, px
    depth_step_px: float


def simulation_grid(geometry: ProbeGeometry, config: AcousticConfig) -> _Grid:
    return _simulation_grid(geometry.layout, config.depth_samples_per_px, config.line_spacing_px)


@lru_cache(maxsize=64)
def _simulation_grid(layout: tuple, samples_per_px: float, line_spacing_px: float) -> _Grid:
    kind, height, width, half_angle_deg, _, r_min, r_max = layout
    if kind == "linear":
        n_depth = max(2, round(height * samples_per_px))
        radii = np.linspace(0, height - 1, n_depth)
        angles = np.arange(width, dtype=np.float64)
        return _Grid(n_depth, width, radii, angles, np.ones(n_depth), float(radii[1] - radii[0]))
    n_depth = max(2, math.ceil((r_max - r_min) * samples_per_px))
    half = math.radians(half_angle_deg)
    n_lines = max(2, math.ceil(2 * half * r_max / line_spacing_px) + 1)
    radii = np.linspace(r_min, r_max, n_depth)
    angles = np.linspace(-half, half, n_lines)
    dtheta = angles[1] - angles[0]
    return _Grid(n_depth, n_lines, radii, angles, np.maximum(radii * dtheta, 1e-3), float(radii[1] - radii[0]))


def polar_points(geometry: ProbeGeometry, config: AcousticConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates (x, y) of every simulation sample, each (n_depth, n_lines) float32."""
    config = config or AcousticConfig()
    return _polar_points(geometry.layout, config.depth_samples_per_px, config.line_spacing_px)


@lru_cache(maxsize=64)
def _polar_points(layout: tuple, samples_per_px: float, line_spacing_px: float) -> tuple[np.ndarray, np.ndarray]:
    grid = _simulation_grid(layout, samples_per_px, line_spacing_px)
    kind, _, width, _, apex_y, _, _ = layout
    if kind == "linear":
        y, x = np.meshgrid(grid.radii, grid.angles, indexing="ij")
    else:
        r, t = np.meshgrid(grid.radii, grid.angles, indexing="ij")
        x, y = width / 2 - 0.5 + r * np.sin(t), apex_y + r * np.cos(t)
    x, y = x.astype(np.float32), y.astype(np.float32)
    x.flags.writeable = y.flags.writeable = False
    return x, y


@dataclass(frozen=True)
class _ScanConversion:
    """Bilinear interpolation from the grid to each pixel inside the fan (flat indices and weights)."""

    inside: np.ndarray  # (height, width) bool
    corners: np.ndarray  # (4, n_inside) flat grid indices
    weights: np.ndarray  # (4, n_inside) float32


@lru_cache(maxsize=64)
def _scan_conversion(layout: tuple, samples_per_px: float, line_spacing_px: float) -> _ScanConversion:
    grid = _simulation_grid(layout, samples_per_px, line_spacing_px)
    kind, height, width, half_angle_deg, apex_y, r_min, r_max = layout
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    if kind == "linear":
        inside = np.ones((height, width), dtype=bool)
        depth_idx, line_idx = yy / grid.depth_step_px, xx
    else:
        dx, dy = xx - (width / 2 - 0.5), yy - apex_y
        r, theta = np.hypot(dx, dy), np.arctan2(dx, dy)
        half = math.radians(half_angle_deg)
        inside = (r >= r_min) & (r <= r_max) & (np.abs(theta) <= half)
        depth_idx = (r - r_min) / grid.depth_step_px
        line_idx = (theta + half) / (grid.angles[1] - grid.angles[0])
    d = np.clip(depth_idx[inside], 0, grid.n_depth - 1)
    l_ = np.clip(line_idx[inside], 0, grid.n_lines - 1)
    d0 = np.minimum(d.astype(np.intp), grid.n_depth - 2)
    l0 = np.minimum(l_.astype(np.intp), grid.n_lines - 2)
    fd, fl = d - d0, l_ - l0
    corners = np.stack(
        [
            d0 * grid.n_lines + l0,
            d0 * grid.n_lines + l0 + 1,
            (d0 + 1) * grid.n_lines + l0,
            (d0 + 1) * grid.n_lines + l0 + 1,
        ]
    )
    weights = np.stack([(1 - fd) * (1 - fl), (1 - fd) * fl, fd * (1 - fl), fd * fl]).astype(np.float32)
    return _ScanConversion(inside, corners, weights)


def fan_mask(geometry: ProbeGeometry, config: AcousticConfig | None = None) -> np.ndarray:
    """Boolean (height, width) mask of the imaged region (all True for a linear probe)."""
    config = config or AcousticConfig()
    return _scan_conversion(geometry.layout, config.depth_samples_per_px, config.line_spacing_px).inside.copy()


def scan_convert(polar: np.ndarray, geometry: ProbeGeometry, config: AcousticConfig | None = None) -> np.ndarray:
    """Resample a (n_depth, n_lines) grid image to the (height, width) image (bilinear); 0 outside the fan."""
    config = config or AcousticConfig()
    conversion = _scan_conversion(geometry.layout, config.depth_samples_per_px, config.line_spacing_px)
    flat = np.asarray(polar, dtype=np.float32).ravel()
    out = np.zeros(geometry.shape, dtype=np.float32)
    out[conversion.inside] = (flat[conversion.corners] * conversion.weights).sum(axis=0)
    return out


def axial_pulse(config: AcousticConfig) -> np.ndarray:
    """The pulse in depth samples as a complex (analytic) signal, scaled to unit energy.

    The real part is the Gaussian-modulated cosine RF pulse, the imaginary part its quadrature
    (Gaussian-modulated sine, the pulse's Hilbert transform for a band-limited pulse). Convolving
    with it gives the RF line and its quadrature at once, so envelope detection is a magnitude and
    no global Hilbert transform smears strong echoes along the beam. Unit energy (with unit-energy
    lateral beams) makes an echogenicity of 1 show at 0 dB at every depth.
    """
    samples_per_px = config.depth_samples_per_px
    sigma = config.axial_sigma_px * samples_per_px
    z = np.arange(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1, dtype=np.float64)
    phase = 2 * math.pi * z / (config.wavelength_px * samples_per_px)
    pulse = np.exp(-(z**2) / (2 * sigma**2)) * np.exp(1j * phase)
    return pulse / math.sqrt(float((np.abs(pulse) ** 2).sum()))


def lateral_sigma_lines(grid: _Grid, config: AcousticConfig) -> np.ndarray:
    """Lateral beam width (Gaussian sigma) at each depth, in scan lines: a focused Gaussian beam.

    sigma(z) = sigma_focus * sqrt(1 + ((z - z_focus) / z_rayleigh)^2), converted from pixels to
    lines with the local line spacing (sector lines fan out with depth).
    """
    depth_fraction = np.linspace(0, 1, grid.n_depth)
    defocus = (depth_fraction - config.focus_depth) / max(config.rayleigh_length, 1e-6)
    sigma_px = config.lateral_sigma_px * np.sqrt(1 + defocus**2)
    return np.clip(sigma_px / grid.line_spacing, 0.7, 12.0)


@lru_cache(maxsize=64)
def _interpolation_weights(fine: int, coarse: int) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour index and weight to linearly interpolate `coarse` samples onto `fine` ones."""
    positions = np.linspace(0, coarse - 1, fine)
    left = np.minimum(positions.astype(np.intp), coarse - 2)
    return left, (positions - left).astype(np.float32)


def _smooth_field(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field (tissue heterogeneity): coarse noise, interpolated.

    Separable gathers rather than matrix products: BLAS threads fight over shared cores.
    """
    coarse = (max(2, math.ceil(shape[0] / scale)), max(2, math.ceil(shape[1] / scale)))
    noise = rng.standard_normal(coarse, dtype=np.float32)
    rows, row_w = _interpolation_weights(shape[0], coarse[0])
    cols, col_w = _interpolation_weights(shape[1], coarse[1])
    field = noise[rows] * (1 - row_w[:, None]) + noise[rows + 1] * row_w[:, None]
    field = field[:, cols] * (1 - col_w) + field[:, cols + 1] * col_w
    std = float(field.std())
    return (field - field.mean()) / (std if std > 0 else 1.0)


def simulate_envelope(
    tissue_map: np.ndarray,
    tissues: Sequence[Tissue],
    geometry: ProbeGeometry,
    rng: np.random.Generator,
    config: AcousticConfig | None = None,
) -> np.ndarray:
    """Envelope (linear amplitude, 1.0 = reference tissue) on the simulation grid, before log compression."""
    config = config or AcousticConfig()
    grid = simulation_grid(geometry, config)
    tissue_map = np.asarray(tissue_map)
    if tissue_map.shape != (grid.n_depth, grid.n_lines):
        raise SonosynthError(
            f"tissue map on the simulation grid must be {(grid.n_depth, grid.n_lines)}, got {tissue_map.shape}"
        )
    if tissue_map.size and (tissue_map.min() < 0 or tissue_map.max() >= len(tissues)):
        raise SonosynthError(f"tissue map values must be 0..{len(tissues) - 1} (one per tissue)")
    table = np.array(
        [[t.echogenicity, t.density, t.attenuation_db_cm_mhz, t.impedance_mrayl] for t in tissues], dtype=np.float32
    )
    table[:, 1] = np.clip(table[:, 1], 1e-4, 1.0)
    echo, density, attenuation, impedance = (table[:, i][tissue_map] for i in range(4))
    shape = tissue_map.shape

    # Scatterers: Gaussian amplitudes on a random subset of samples, scaled so the mean power is
    # echogenicity^2 whatever the density (density changes the statistics, not the brightness).
    scatter = rng.standard_normal(shape, dtype=np.float32)
    sparse = table[:, 1] < 1.0
    if sparse.any():
        present = rng.random(shape, dtype=np.float32) < density
        scatter *= present / np.sqrt(density)
    amplitude = echo
    if config.texture_strength > 0:
        amplitude = echo * np.exp(config.texture_strength * _smooth_field(shape, config.texture_scale_px, rng))
    scatter *= amplitude

    # Specular reflection where the impedance changes along the beam (pressure reflection coefficient),
    # strongest where the boundary faces the beam: weighted by cos^4 of the incidence angle, taken
    # from the smoothed impedance gradient (grazing boundaries send their echo elsewhere).
    reflection = np.zeros_like(impedance)
    reflection[1:] = (impedance[1:] - impedance[:-1]) / (impedance[1:] + impedance[:-1])
    smooth = ndimage.gaussian_filter(impedance, 1.0)
    along = np.gradient(smooth, axis=0) / np.float32(grid.depth_step_px)
    across = np.gradient(smooth, axis=1) / grid.line_spacing[:, None].astype(np.float32)
    facing = (along**2 / (along**2 + across**2 + np.float32(1e-12))) ** 2
    scatter += np.float32(config.specular_gain) * np.abs(reflection) * facing

    # Two-way losses accumulated along each beam (attenuation + intensity transmitted through
    # boundaries), minus what time-gain compensation restores for soft tissue.
    dz_cm = geometry.depth_cm / max(grid.n_depth - 1, 1)
    f = geometry.frequency_mhz
    per_sample_db = np.float32(2 * f * dz_cm) * attenuation - 20 * np.log10(np.clip(1 - reflection**2, 1e-6, 1))
    loss_db = np.cumsum(per_sample_db, axis=0) - per_sample_db
    # A beam has a width, so a shadow's edges are as soft as the beam is wide.
    loss_db = ndimage.gaussian_filter1d(loss_db, float(np.median(lateral_sigma_lines(grid, config))), axis=1)
    tgc_db = np.float32(2 * config.tgc_db_cm_mhz * f * dz_cm) * np.arange(grid.n_depth, dtype=np.float32)[:, None]
    scatter *= 10 ** ((tgc_db - loss_db) / 20)

    # Depth-dependent PSF, separable: the axial pulse along each line, then a Gaussian beam across
    # lines whose width follows the depth (applied row by row as a transfer function in Fourier space).
    pulse = axial_pulse(config)
    iq = np.stack(
        [
            ndimage.convolve1d(scatter, part.astype(np.float32), axis=0, mode="constant")
            for part in (pulse.real, pulse.imag)
        ]
    )
    sigma = lateral_sigma_lines(grid, config).astype(np.float32)
    n_fft = sp_fft.next_fast_len(grid.n_lines + 2 * math.ceil(3 * float(sigma.max())), real=True)
    frequencies = sp_fft.rfftfreq(n_fft).astype(np.float32)
    # Unit-gain Gaussian has energy 1 / (2 sqrt(pi) sigma): rescale so every row keeps unit energy.
    transfer = np.exp(-2 * np.pi**2 * (sigma[:, None] * frequencies[None, :]) ** 2)
    transfer *= np.sqrt(2 * np.sqrt(np.pi) * sigma)[:, None]
    iq = sp_fft.irfft(sp_fft.rfft(iq, n=n_fft, axis=2) * transfer, n=n_fft, axis=2)[:, :, : grid.n_lines]
    analytic = iq[0] + 1j * iq[1]
    noise_amp = np.float32(10 ** (config.noise_db / 20) / math.sqrt(2))
    analytic.real += noise_amp * rng.standard_normal(shape, dtype=np.float32)
    analytic.imag += noise_amp * rng.standard_normal(shape, dtype=np.float32)
    return np.abs(analytic)


def log_compress(envelope: np.ndarray, config: AcousticConfig | None = None) -> np.ndarray:
    """Envelope -> display grey level in [0, 255] (float): gain_db is white, dynamic range below it."""
    config = config or AcousticConfig()
    db = 20 * np.log10(np.maximum(envelope, np.float32(1e-12)))
    return np.clip((db - (config.gain_db - config.dynamic_range_db)) / config.dynamic_range_db, 0, 1) * 255


def simulate_polar(
    tissue_map: np.ndarray,
    tissues: Sequence[Tissue],
    geometry: ProbeGeometry,
    rng: np.random.Generator,
    config: AcousticConfig | None = None,
) -> np.ndarray:
    """uint8 B-mode image from a tissue map already sampled on the simulation grid (see polar_points)."""
    config = config or AcousticConfig()
    grey = scan_convert(
        log_compress(simulate_envelope(tissue_map, tissues, geometry, rng, config), config), geometry, config
    )
    image = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    # Inside the fan nothing is exactly 0, so the field of view is the non-zero area.
    inside = fan_mask(geometry, config)
    image[inside] = np.maximum(image[inside], 1)
    return image


def simulate_bmode(
    label_map: np.ndarray,
    echogenicity: Sequence[Tissue | float] | Mapping[int, Tissue | float],
    geometry: ProbeGeometry,
    rng: np.random.Generator,
    config: AcousticConfig | None = None,
) -> np.ndarray:
    """uint8 B-mode image of a Cartesian (height, width) label map.

    `echogenicity` gives each label a Tissue, or just an echogenicity (other properties of soft
    tissue). The label map is sampled (nearest) at the simulation grid's positions, so structures
    thinner than a pixel may be lost; anatomy generators evaluate their shapes on the grid directly.
    """
    config = config or AcousticConfig()
    label_map = np.asarray(label_map)
    if label_map.shape != geometry.shape:
        raise SonosynthError(f"label map shape {label_map.shape} differs from the geometry's {geometry.shape}")
    items = echogenicity.items() if isinstance(echogenicity, Mapping) else enumerate(echogenicity)
    table = {int(k): v if isinstance(v, Tissue) else Tissue(echogenicity=float(v)) for k, v in items}
    values = np.unique(label_map)
    missing = [int(v) for v in values if int(v) not in table]
    if missing:
        raise SonosynthError(f"labels {missing} have no echogenicity (given for {sorted(table)})")
    n = max(table) + 1
    tissues = [table.get(i, Tissue()) for i in range(n)]
    x, y = polar_points(geometry, config)
    rows = np.clip(np.rint(y), 0, geometry.height - 1).astype(np.intp)
    cols = np.clip(np.rint(x), 0, geometry.width - 1).astype(np.intp)
    return simulate_polar(label_map[rows, cols], tissues, geometry, rng, config)


@dataclass
class SpeckleStatistics:
    """First-order statistics of an envelope region; fully developed speckle is Rayleigh (SNR 1.91)."""

    snr: float
    mean: float
    std: float
    samples: int
    rayleigh_snr: float = field(default=math.sqrt(math.pi / (4 - math.pi)))


def speckle_statistics(envelope: np.ndarray, region: np.ndarray | None = None) -> SpeckleStatistics:
    values = np.asarray(envelope, dtype=np.float64)
    values = values[region] if region is not None else values.ravel()
    mean, std = float(values.mean()), float(values.std())
    return SpeckleStatistics(snr=mean / std if std > 0 else float("inf"), mean=mean, std=std, samples=values.size)
