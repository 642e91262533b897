import math
from pathlib import Path

import numpy as np
import pytest

from sonosynth.data.ellipse import head_circumference_mm
from sonosynth.data.format import Dataset
from sonosynth.errors import SonosynthError
from sonosynth.phantom.acoustics import (
    AcousticConfig,
    Tissue,
    fan_mask,
    linear_geometry,
    sector_geometry,
    simulate_bmode,
    simulate_envelope,
    simulation_grid,
    speckle_statistics,
)
from sonosynth.phantom.anatomy import fetal_head
from sonosynth.phantom.cases import PhantomConfig, generate_case, parse_size
from sonosynth.phantom.dataset import case_rng, write_phantom_dataset

SOFT = Tissue(echogenicity=0.5)


def test_generate_case_is_deterministic_per_seed():
    a = generate_case("cardiac", 48, np.random.default_rng(3))
    b = generate_case("cardiac", 48, np.random.default_rng(3))
    c = generate_case("cardiac", 48, np.random.default_rng(4))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(("domain", "labels"), [("fetal-head", {0, 1}), ("cardiac", {0, 1, 2, 3}), ("breast", {0, 1})])
def test_cases_cover_their_labels(domain, labels):
    options = {"pathology": "benign"} if domain == "breast" else {}
    for i in range(3):
        image, mask, params = generate_case(domain, (48, 64), np.random.default_rng(i), **options)
        assert image.shape == mask.shape == (48, 64) and image.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == labels, (domain, i)
        assert params["spacing_mm"] is None or params["spacing_mm"] > 0


def test_sector_outside_fan_is_black_and_inside_is_not():
    for domain in ("fetal-head", "cardiac"):
        image, mask, _ = generate_case(domain, 64, np.random.default_rng(1))
        dark = image == 0
        assert dark.any() and (image[~dark] > 0).all()
        # Everything outside the fan is exactly 0; inside nothing is (the fov is the non-zero area).
        assert mask[dark].max(initial=0) == 0
    geometry = sector_geometry(40, 40, half_angle_deg=35, apex_y=-10, depth_cm=10, frequency_mhz=3.5)
    fan = fan_mask(geometry)
    image = simulate_bmode(np.zeros((40, 40), int), [SOFT], geometry, np.random.default_rng(0))
    assert (image[~fan] == 0).all() and (image[fan] > 0).all() and 0 < fan.mean() < 1


def test_skull_ring_brighter_than_brain_and_mask_is_the_head():
    rng = np.random.default_rng(7)
    scene = fetal_head(96, 96, rng)
    from sonosynth.phantom.cases import render_scene

    image, mask, params = render_scene(scene, rng)
    yy, xx = np.mgrid[0:96, 0:96]
    c, s = math.cos(params["angle_rad"]), math.sin(params["angle_rad"])
    dx, dy = xx - params["center_x"], yy - params["center_y"]
    rho = np.hypot((dx * c + dy * s) / params["semi_major_px"], (-dx * s + dy * c) / params["semi_minor_px"])
    thickness = params["skull_thickness_px"] / params["semi_minor_px"]
    ring = (rho <= 1) & (rho >= 1 - thickness)
    brain = rho <= 0.6
    assert image[ring].mean() > image[brain].mean() + 20
    # The mask is the filled outer ellipse.
    assert mask[rho <= 0.97].all() and not mask[rho >= 1.03].any()


def test_breast_lesions_darker_than_surroundings_and_normal_is_empty():
    from scipy import ndimage

    for pathology in ("benign", "malignant"):
        image, mask, params = generate_case("breast", 96, np.random.default_rng(11), pathology=pathology)
        lesion = mask == 1
        rows = np.where(lesion.any(axis=1))[0]
        # Same depths, beside the lesion (not behind it, where enhancement or shadow lives).
        beside = ndimage.binary_dilation(lesion, iterations=8) & ~lesion
        beside[: rows.min()] = beside[rows.max() + 1 :] = False
        assert params["pathology"] == pathology
        assert image[lesion].mean() < 0.6 * image[beside].mean(), pathology
    _, mask, params = generate_case("breast", 64, np.random.default_rng(0), pathology="normal")
    assert params["pathology"] == "normal" and not mask.any()


def test_malignant_outline_is_more_irregular_than_benign():
    from skimage.measure import perimeter

    def solidity_ratio(pathology):
        ratios = []
        for seed in range(4):
            _, mask, _ = generate_case("breast", 96, np.random.default_rng(seed), pathology=pathology)
            ratios.append(perimeter(mask) ** 2 / (4 * math.pi * mask.sum()))
        return np.mean(ratios)

    assert solidity_ratio("malignant") > solidity_ratio("benign") + 0.3


def _depth_profile(tissues, layer, geometry, rows):
    grid = simulation_grid(geometry, AcousticConfig())
    tissue_map = np.zeros((grid.n_depth, grid.n_lines), int)
    tissue_map[rows[0] : rows[1]] = layer
    config = AcousticConfig(texture_strength=0.0)
    env = simulate_envelope(tissue_map, tissues, geometry, np.random.default_rng(0), config)
    return env


def test_shadow_behind_bone_and_enhancement_behind_fluid():
    geometry = linear_geometry(96, 64, depth_cm=8, frequency_mhz=3.5)
    bone = Tissue(2.0, 1.0, 6.0, 5.0)
    fluid = Tissue(0.01, 0.05, 0.002, 1.52)
    uniform = _depth_profile([SOFT, SOFT], 1, geometry, (30, 40))
    shadowed = _depth_profile([SOFT, bone], 1, geometry, (30, 40))
    enhanced = _depth_profile([SOFT, fluid], 1, geometry, (30, 40))
    below, above = slice(60, 90), slice(5, 25)
    assert np.isclose(shadowed[above].mean(), uniform[above].mean(), rtol=0.1)
    assert shadowed[below].mean() < 0.3 * uniform[below].mean()
    assert enhanced[below].mean() > 1.3 * uniform[below].mean()
    # The boundary facing the beam is a bright specular echo.
    assert shadowed[29:32].mean() > 2 * uniform[29:32].mean()


def test_fully_developed_speckle_is_rayleigh_and_sparse_scatterers_are_not():
    geometry = linear_geometry(128, 128, depth_cm=4, frequency_mhz=10)
    grid = simulation_grid(geometry, AcousticConfig())
    config = AcousticConfig(texture_strength=0.0, noise_db=-120, tgc_db_cm_mhz=0.0)
    zeros = np.zeros((grid.n_depth, grid.n_lines), int)
    dense = simulate_envelope(zeros, [Tissue(1.0, 1.0, 0.0)], geometry, np.random.default_rng(0), config)
    sparse = simulate_envelope(zeros, [Tissue(1.0, 0.02, 0.0)], geometry, np.random.default_rng(0), config)
    inner = (slice(16, -16), slice(16, -16))
    stats = speckle_statistics(dense[inner])
    assert abs(stats.snr - stats.rayleigh_snr) < 0.06
    assert abs(stats.mean**2 * 4 / math.pi - 1.0) < 0.1  # mean power equals echogenicity^2
    assert speckle_statistics(sparse[inner]).snr < 1.5


def test_simulate_bmode_on_a_label_map_with_float_echogenicities():
    geometry = linear_geometry(32, 48, depth_cm=4, frequency_mhz=10)
    labels = np.zeros((32, 48), int)
    labels[:, 24:] = 1
    image = simulate_bmode(labels, [0.05, 1.0], geometry, np.random.default_rng(0))
    assert image[:, 28:].mean() > image[:, :20].mean() + 30
    with pytest.raises(SonosynthError, match=r"labels \[1\] have no echogenicity"):
        simulate_bmode(labels, [1.0], geometry, np.random.default_rng(0))
    with pytest.raises(SonosynthError, match="differs from the geometry"):
        simulate_bmode(labels[:10], [1.0, 1.0], geometry, np.random.default_rng(0))


def test_bad_arguments_have_clear_errors(tmp_path: Path):
    with pytest.raises(SonosynthError, match="unknown phantom domain 'liver'"):
        generate_case("liver", 32, np.random.default_rng(0))
    with pytest.raises(SonosynthError, match="at least 16 pixels"):
        parse_size(8)
    with pytest.raises(SonosynthError, match="WIDTHxHEIGHT"):
        parse_size("big")
    with pytest.raises(SonosynthError, match="--n must be at least 1"):
        write_phantom_dataset(tmp_path / "x", "breast", 0, 32, 0)
    with pytest.raises(SonosynthError, match="unknown tissues"):
        PhantomConfig.from_dict({"tissues": {"unobtainium": {"echogenicity": 1.0}}})
    assert parse_size("96x64") == (64, 96) and parse_size(32) == (32, 32)
    assert not (tmp_path / "x").exists()


def test_fetal_head_dataset_is_hc18_like(tmp_path: Path):
    out = write_phantom_dataset(tmp_path / "fh", "fetal-head", 6, (48, 64), seed=5)
    ds = Dataset.open(out)
    assert ds.info.labels == {"0": "background", "1": "head"} and ds.info.attributes == {"hc_mm": None}
    assert len(ds) == 6 and len(ds.subjects) == 6
    for sample in ds:
        record = sample.record
        hc = float(record.attributes["hc_mm"])
        assert 45 <= hc <= 360
        assert hc == pytest.approx(head_circumference_mm(sample.mask, record.spacing_mm), abs=0.01)
        assert float(record.extra["target_hc_mm"]) == pytest.approx(hc, rel=0.05)
        assert {"center_x", "semi_major_px", "echo_skull"} <= set(record.extra)
    # Any case regenerates from (seed, index) alone.
    image, mask, _ = generate_case("fetal-head", (48, 64), case_rng(5, 3))
    assert np.array_equal(ds[3].image, image) and np.array_equal(ds[3].mask, mask)


def test_fixed_pixel_size_and_cardiac_breast_datasets(tmp_path: Path):
    ds = Dataset.open(write_phantom_dataset(tmp_path / "fh", "fetal-head", 3, 64, seed=1, pixel_size_mm=0.5))
    assert {r.spacing_mm for r in ds.records} == {0.5}
    cardiac = Dataset.open(write_phantom_dataset(tmp_path / "ca", "cardiac", 4, 40, seed=0))
    assert cardiac.info.labels == {"0": "background", "1": "lv_endo", "2": "myocardium", "3": "left_atrium"}
    assert {r.attributes["view"] for r in cardiac.records} == {"4CH"}
    assert {r.attributes["phase"] for r in cardiac.records} <= {"ED", "ES"}
    breast = Dataset.open(write_phantom_dataset(tmp_path / "br", "breast", 12, 32, seed=0))
    pathologies = {r.attributes["pathology"] for r in breast.records}
    assert pathologies <= {"benign", "malignant", "normal"} and len(pathologies) >= 2
    for sample in breast:
        assert sample.mask.any() == (sample.record.attributes["pathology"] != "normal")
    with pytest.raises(SonosynthError, match="already exists"):
        write_phantom_dataset(tmp_path / "br", "breast", 1, 32, seed=0)


def test_end_systole_has_smaller_cavity_than_end_diastole():
    ed = [generate_case("cardiac", 64, np.random.default_rng(i), phase="ED")[1] for i in range(3)]
    es = [generate_case("cardiac", 64, np.random.default_rng(i), phase="ES")[1] for i in range(3)]
    for d, s in zip(ed, es, strict=True):
        assert (s == 1).sum() < 0.8 * (d == 1).sum()
