"""Measure the phantom against theory and real data (numbers quoted in docs/phantom.md).

1. Speckle: envelope SNR (mean/std before log compression) in a homogeneous region, against the
   Rayleigh value sqrt(pi / (4 - pi)) = 1.91 of fully developed speckle, for several scatterer densities.
2. Grey levels: fetal-head phantoms against real HC18 images, inside the field of view:
   mean, std, histogram intersection and Wasserstein distance of the pooled grey-level histograms.

    python benchmarks/phantom_statistics.py [--hc18 ../shared/data/hc18] [--n 100] [--size 256]
"""

from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import wasserstein_distance

from sonosynth.data.transforms import field_of_view
from sonosynth.phantom.acoustics import AcousticConfig, Tissue, linear_geometry, simulate_envelope, simulation_grid
from sonosynth.phantom.cases import generate_case
from sonosynth.phantom.dataset import case_rng

REPO = Path(__file__).resolve().parents[1]


def speckle_table(seed: int = 0) -> list[tuple[float, float, float]]:
    """(density, SNR, std of SNR over 8 repeats) in a homogeneous linear-probe block without texture."""
    config = AcousticConfig(texture_strength=0.0, noise_db=-120.0)
    geometry = linear_geometry(256, 256, depth_cm=4.0, frequency_mhz=10.0)
    grid = simulation_grid(geometry, config)
    rows = []
    for density in (1.0, 0.3, 0.1, 0.03, 0.01):
        # No attenuation: the region stays statistically homogeneous with depth.
        tissue = Tissue(echogenicity=1.0, density=density, attenuation_db_cm_mhz=0.0)
        config.tgc_db_cm_mhz = 0.0
        snrs = []
        for repeat in range(8):
            env = simulate_envelope(
                np.zeros((grid.n_depth, grid.n_lines), int),
                [tissue],
                geometry,
                np.random.default_rng([seed, repeat]),
                config,
            )
            region = env[32:-32, 32:-32]  # away from the edges of the convolution
            snrs.append(region.mean() / region.std())
        rows.append((density, float(np.mean(snrs)), float(np.std(snrs))))
    return rows


def grey_values(images: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([img[field_of_view(img)].ravel() for img in images])


def load_hc18(folder: Path, n: int, size: int) -> list[np.ndarray]:
    files = sorted(glob.glob(str(folder / "training_set" / "*_HC.png")))[:n]
    out = []
    for f in files:
        with Image.open(f) as im:
            gray = im.convert("L")
            scale = size / max(gray.size)
            out.append(np.asarray(gray.resize((round(gray.width * scale), round(gray.height * scale)), Image.BILINEAR)))
    return out


def compare(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    bins = np.arange(257)
    h_real = np.histogram(real, bins)[0] / real.size
    h_fake = np.histogram(fake, bins)[0] / fake.size
    return {
        "real_mean": float(real.mean()),
        "real_std": float(real.std()),
        "phantom_mean": float(fake.mean()),
        "phantom_std": float(fake.std()),
        "intersection": float(np.minimum(h_real, h_fake).sum()),
        "wasserstein": float(wasserstein_distance(bins[:-1], bins[:-1], h_real, h_fake)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_hc18 = Path(os.environ.get("SONOSYNTH_DATA_DIR", REPO.parent / "shared" / "data")) / "hc18"
    parser.add_argument("--hc18", type=Path, default=default_hc18)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-speckle", action="store_true")
    args = parser.parse_args()

    if not args.skip_speckle:
        print("Envelope SNR in a homogeneous region (Rayleigh theory 1.913):")
        print("| scatterers per sample | SNR (mean ± sd of 8) |\n|---|---|")
        for density, snr, sd in speckle_table(args.seed):
            print(f"| {density:g} | {snr:.3f} ± {sd:.3f} |")

    phantoms = [generate_case("fetal-head", args.size, case_rng(args.seed, i))[0] for i in range(args.n)]
    fake = grey_values(phantoms)
    if not (args.hc18 / "training_set").is_dir():
        print(f"HC18 not found at {args.hc18}: phantom inside-FOV mean {fake.mean():.1f}, std {fake.std():.1f}")
        return
    real = grey_values(load_hc18(args.hc18, args.n, args.size))
    stats = compare(real, fake)
    print(
        f"\nGrey levels inside the field of view, {args.n} HC18 images vs {args.n} fetal-head phantoms "
        f"(longest side {args.size} px):"
    )
    print("| | mean | std |\n|---|---|---|")
    print(f"| HC18 | {stats['real_mean']:.1f} | {stats['real_std']:.1f} |")
    print(f"| phantom | {stats['phantom_mean']:.1f} | {stats['phantom_std']:.1f} |")
    print(
        f"histogram intersection {stats['intersection']:.3f} (1 = identical), "
        f"Wasserstein distance {stats['wasserstein']:.2f} grey levels"
    )


if __name__ == "__main__":
    main()
