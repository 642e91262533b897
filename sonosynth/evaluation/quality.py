"""Image quality of a synthetic dataset against the real one it imitates.

Five questions, each answered with numbers and a real-vs-real reference where one exists:
- mask fidelity: does a segmenter find the conditioning mask in the synthetic image?
- distribution distance: FID/KID (Inception with `--inception PATH`, else texture features that
  are clearly NOT comparable to published FID);
- diversity: mean pairwise MS-SSIM within synthetic vs within real (higher = more alike);
- intensity: histogram distance and speckle statistics inside the field of view;
- memorisation: each synthetic image's nearest real training image, against how close real images
  are to each other, because diffusion models trained on a few hundred images copy them.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from sonosynth.data.format import Dataset
from sonosynth.devices import resolve_device
from sonosynth.errors import SonosynthError
from sonosynth.files import output_folder, prepare_output
from sonosynth.settings import Config

TEXTURE_FEATURES = "sonosynth-texture-v1"
TEXTURE_WARNING = (
    "computed on handcrafted texture features (intensity, multi-scale gradient and local-binary-pattern "
    "histograms, local speckle statistics), NOT on Inception features: not comparable to published FID/KID"
)


@dataclass
class QualityConfig(Config):
    what: ClassVar[str] = "quality evaluation"

    size: int = 128  # images are letterboxed to size x size for every measure but mask fidelity
    memorisation_size: int = 32  # pixel-space nearest neighbours on downsampled images
    near_copy_ratio: float = 0.5  # flagged when NN distance < ratio x median real-to-real NN distance
    max_pairs: int = 200  # MS-SSIM pairs sampled within each set
    kid_subsets: int = 50
    kid_subset_size: int = 100
    seed: int = 0


# ---------------------------------------------------------------------------------------- images


def letterboxed_unit(dataset: Dataset, size: int) -> np.ndarray:
    """All images letterboxed to (N, size, size) float32 in [0, 1] (padding black)."""
    from sonosynth.segmentation.predict import image_to_model

    return np.stack([(image_to_model(s.image, size)[0].numpy() + 1.0) / 2.0 for s in dataset]).astype(np.float32)


def fov_masks(dataset: Dataset, size: int) -> np.ndarray:
    """Field-of-view masks letterboxed like the images, slightly eroded (fan edges are not speckle)."""
    from scipy import ndimage

    from sonosynth.data.transforms import field_of_view, letterbox_mask

    masks = [letterbox_mask(field_of_view(s.image).astype(np.uint8), size).numpy() > 0 for s in dataset]
    return np.stack([ndimage.binary_erosion(m, iterations=2) for m in masks])


# -------------------------------------------------------------------------------------- features


def texture_features(images: np.ndarray) -> np.ndarray:
    """Per-image texture descriptor (N, D) for distribution distances without pretrained weights.

    Ultrasound realism is mostly speckle texture and its intensity profile, so the descriptor
    collects intensity, gradient-magnitude (3 scales) and local-binary-pattern (2 radii)
    histograms plus local mean/std statistics. Deterministic and weight-free.
    """
    from scipy import ndimage
    from skimage.feature import local_binary_pattern

    rows = []
    for image in images:
        parts = [np.histogram(image, bins=16, range=(0.0, 1.0))[0] / image.size]
        for sigma in (1.0, 2.0, 4.0):
            magnitude = ndimage.gaussian_gradient_magnitude(image, sigma)
            parts.append(np.histogram(magnitude, bins=8, range=(0.0, 0.25 / sigma))[0] / image.size)
        quantised = np.round(image * 255).astype(np.uint8)
        for radius in (1, 2):
            lbp = local_binary_pattern(quantised, 8, radius, method="uniform")
            parts.append(np.histogram(lbp, bins=10, range=(0, 10))[0] / image.size)
        mean = ndimage.uniform_filter(image, 5)
        std = np.sqrt(np.maximum(ndimage.uniform_filter(image**2, 5) - mean**2, 0.0))
        parts.append(np.array([mean.mean(), mean.std(), std.mean(), std.std()]))
        rows.append(np.concatenate(parts))
    return np.asarray(rows, dtype=np.float64)


def inception_features(images: np.ndarray, weights: str | Path, batch_size: int = 16,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """2048-d pool features of the standard FID Inception (pt_inception-2015-12-05) from a local file.

    Uses torch-fidelity's TF-compatible InceptionV3 (optional dependency) with the given weights
    path, so nothing is downloaded.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise SonosynthError(f"{weights}: Inception weights file not found")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise SonosynthError(
            "--inception needs the optional package torch-fidelity (pip install torch-fidelity)"
        ) from None
    try:
        extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                feature_extractor_weights_path=str(weights))
    except Exception as exc:  # corrupt or foreign weight files raise many types
        raise SonosynthError(f"{weights}: cannot load Inception weights ({exc})") from None
    device = resolve_device(device)
    extractor.to(device)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            gray = torch.as_tensor(np.round(images[start : start + batch_size] * 255)).to(torch.uint8)
            rgb = gray[:, None].expand(-1, 3, -1, -1).contiguous().to(device)
            (features,) = extractor(rgb)
            out.append(features.double().cpu().numpy())
    return np.concatenate(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (MONAI's FID formula)."""
    from monai.metrics import FIDMetric

    with warnings.catch_warnings():  # scipy sqrtm warns on near-singular covariances of small sets
        warnings.simplefilter("ignore")
        value = float(FIDMetric()(torch.as_tensor(a), torch.as_tensor(b)))
    return max(value, 0.0)  # tiny negatives are round-off: the distance is non-negative


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """KID: unbiased MMD² with the cubic polynomial kernel, mean and std over random subsets."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        return math.nan, math.nan
    dim = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / dim + 1) ** 3, ((y @ y.T) / dim + 1) ** 3, ((x @ y.T) / dim + 1) ** 3
        off = ~np.eye(m, dtype=bool)
        values.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


# -------------------------------------------------------------------------------------- diversity


def ms_ssim_weights(size: int) -> tuple[int, tuple[float, ...]]:
    """Kernel size and scale weights that fit `size` (MS-SSIM halves the image per scale)."""
    standard = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    kernel = 7 if size >= 128 else 3
    scales = len(standard)
    while scales > 1 and size <= (kernel - 1) * 2 ** (scales - 1):
        scales -= 1
    weights = np.array(standard[:scales]) / sum(standard[:scales])
    return kernel, tuple(float(w) for w in weights)


def mean_pairwise_ms_ssim(images: np.ndarray, max_pairs: int, seed: int) -> tuple[float, int]:
    """Mean MS-SSIM over random distinct pairs (MONAI); (NaN, 0) with fewer than 2 images."""
    from monai.metrics import MultiScaleSSIMMetric

    n = len(images)
    if n < 2:
        return math.nan, 0
    all_pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    rng = np.random.default_rng(seed)
    chosen = [all_pairs[i] for i in rng.choice(len(all_pairs), min(max_pairs, len(all_pairs)), replace=False)]
    kernel, weights = ms_ssim_weights(images.shape[-1])
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=kernel, kernel_sigma=1.5,
                                  weights=weights)
    x = torch.as_tensor(images)
    first = x[[i for i, _ in chosen]][:, None]
    second = x[[j for _, j in chosen]][:, None]
    values = metric(first, second).flatten()
    return float(values.mean()), len(chosen)


# -------------------------------------------------------------------------------------- intensity


def intensity_statistics(images: np.ndarray, fov: np.ndarray) -> dict[str, Any]:
    """Pooled histogram inside the field of view and per-image speckle statistics (5x5 windows).

    `speckle_snr` is the median local mean/std: about 1.91 for fully developed Rayleigh speckle
    before log compression; what matters here is whether synthetic matches real.
    """
    from scipy import ndimage

    pooled = np.concatenate([im[m] for im, m in zip(images, fov, strict=True) if m.any()] or [np.zeros(0)])
    histogram = np.histogram(pooled, bins=64, range=(0.0, 1.0))[0].astype(np.float64)
    snr, local_std, means = [], [], []
    for image, mask in zip(images, fov, strict=True):
        if mask.sum() < 25:
            continue
        mean = ndimage.uniform_filter(image, 5)
        std = np.sqrt(np.maximum(ndimage.uniform_filter(image**2, 5) - mean**2, 0.0))
        valid = mask & (std > 1e-4)
        if valid.any():
            snr.append(float(np.median(mean[valid] / std[valid])))
            local_std.append(float(np.median(std[valid])))
        means.append(float(image[mask].mean()))
    return {
        "histogram": (histogram / max(histogram.sum(), 1.0)).tolist(),
        "mean_intensity": _mean_std(means),
        "speckle_snr": _mean_std(snr),
        "local_std": _mean_std(local_std),
    }


def histogram_distances(p: Sequence[float], q: Sequence[float]) -> dict[str, float]:
    """Wasserstein-1 (in intensity units, [0, 1]) and Jensen-Shannon distance between two histograms."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    centers = (np.arange(len(p)) + 0.5) / len(p)
    p_arr, q_arr = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p_arr.sum() == 0 or q_arr.sum() == 0:
        return {"wasserstein": math.nan, "jensen_shannon": math.nan}
    return {
        "wasserstein": float(wasserstein_distance(centers, centers, p_arr, q_arr)),
        "jensen_shannon": float(jensenshannon(p_arr, q_arr, base=2)),
    }


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()) if arr.size else math.nan, "std": float(arr.std()) if arr.size else math.nan}


# --------------------------------------------------------------------------------- memorisation


def nearest_neighbours(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance to, and index of, each query's nearest reference row (RMS per dimension)."""
    q = torch.as_tensor(queries.reshape(len(queries), -1), dtype=torch.float64)
    r = torch.as_tensor(references.reshape(len(references), -1), dtype=torch.float64)
    distances = torch.cdist(q, r) / math.sqrt(q.shape[1])
    best = distances.min(dim=1)
    return best.values.numpy(), best.indices.numpy()


def real_reference_distances(
    held_out: np.ndarray, train: np.ndarray, train_subjects: Sequence[str]
) -> np.ndarray:
    """How close a NEW real image comes to the training images: held-out -> train NN distances.

    Without held-out images, leave-one-subject-out within train (another image of the same patient
    is not a new image).
    """
    if len(held_out):
        return nearest_neighbours(held_out, train)[0]
    flat = torch.as_tensor(train.reshape(len(train), -1), dtype=torch.float64)
    distances = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    subjects = np.asarray(train_subjects)
    same = torch.as_tensor(subjects[:, None] == subjects[None, :])
    distances[same] = math.inf
    return distances.min(dim=1).values.numpy()


@dataclass
class MemorisationRow:
    id: str
    nearest_real: str
    pixel_distance: float
    pixel_ratio: float
    feature_distance: float
    feature_ratio: float
    near_copy: bool


def memorisation_table(
    synthetic_ids: Sequence[str],
    synthetic_pixels: np.ndarray,
    synthetic_features: np.ndarray,
    train_ids: Sequence[str],
    train_pixels: np.ndarray,
    train_features: np.ndarray,
    reference_pixel: np.ndarray,
    reference_feature: np.ndarray,
    near_copy_ratio: float,
) -> list[MemorisationRow]:
    """Nearest real training image per synthetic image, as a ratio to the median real-to-real distance.

    A near-copy is flagged when the pixel-space ratio is below `near_copy_ratio`: the synthetic image
    is much closer to one training image than new real images ever are.
    """
    pixel_d, pixel_i = nearest_neighbours(synthetic_pixels, train_pixels)
    feature_d, _ = nearest_neighbours(synthetic_features, train_features)
    pixel_ref = float(np.median(reference_pixel)) or 1e-12
    feature_ref = float(np.median(reference_feature)) or 1e-12
    rows = [
        MemorisationRow(
            id=sid,
            nearest_real=train_ids[int(pi)],
            pixel_distance=float(pd),
            pixel_ratio=float(pd / pixel_ref),
            feature_distance=float(fd),
            feature_ratio=float(fd / feature_ref),
            near_copy=bool(pd / pixel_ref < near_copy_ratio),
        )
        for sid, pd, pi, fd in zip(synthetic_ids, pixel_d, pixel_i, feature_d, strict=True)
    ]
    return sorted(rows, key=lambda r: r.pixel_ratio)


# ------------------------------------------------------------------------------------------ runner


def mask_fidelity(segmenter_path: str | Path, dataset: Dataset, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Dice between each image's mask and the segmenter's prediction: per label (mean ± std over images with
    the label, the reports' policy) and per image (`fidelity_dice`, the score `sonosynth generate` records)."""
    from sonosynth.metrics import dice_per_label
    from sonosynth.segmentation.predict import load_segmenter, predict_masks
    from sonosynth.synthesis.fidelity import mask_dice

    segmenter = load_segmenter(segmenter_path, device)
    if segmenter.num_labels != dataset.info.num_labels:
        raise SonosynthError(
            f"{segmenter_path}: segmenter labels {segmenter.labels} do not match {dataset.root}'s {dataset.info.labels}"
        )
    per_image = []
    for sample in dataset:
        (pred,) = predict_masks(segmenter, [sample.image])
        per_image.append({"id": sample.id, "dice": dice_per_label(pred, sample.mask, segmenter.num_labels),
                          "fidelity_dice": mask_dice(sample.mask, pred, segmenter.num_labels)})
    labels = [str(v) for v in range(1, segmenter.num_labels)]
    summary = {}
    for label in labels:
        values = [p["dice"][label] for p in per_image if not math.isnan(p["dice"][label])]
        summary[label] = _mean_std(values)
    return {"n_images": len(per_image), "dice": summary, "per_image": per_image}


def _distribution(real_images: np.ndarray, synth_images: np.ndarray, held_images: np.ndarray, config: QualityConfig,
                  inception_path: str | Path | None, device: str) -> tuple[dict[str, Any], tuple[np.ndarray, ...]]:
    """FID/KID of the synthetic images against the real ones (and what held-out real images score), with the
    features they were measured on (real, synthetic, held out): Inception's where given, else texture features."""
    extractor: Callable[[np.ndarray], np.ndarray]
    if inception_path is not None:
        def extractor(images: np.ndarray) -> np.ndarray:
            return inception_features(images, inception_path, device=device)
        feature_name, comparable = "pt_inception-2015-12-05 pool3 (2048-d)", True
    else:
        extractor, feature_name, comparable = texture_features, TEXTURE_FEATURES, False
    real_raw, synth_raw = extractor(real_images), extractor(synth_images)
    held_raw = extractor(held_images) if len(held_images) else real_raw[:0]
    if comparable:
        real_f, synth_f, held_f = real_raw, synth_raw, held_raw
    else:  # put handcrafted features on one scale (the real set's), so no histogram bin dominates
        mu, sd = real_raw.mean(0), real_raw.std(0) + 1e-8
        real_f, synth_f, held_f = (real_raw - mu) / sd, (synth_raw - mu) / sd, (held_raw - mu) / sd
    kid_mean, kid_std = kernel_distance(real_f, synth_f, config.kid_subsets, config.kid_subset_size, config.seed)
    section = {
        "features": feature_name,
        "comparable_to_published": comparable,
        "note": "standard FID/KID" if comparable else TEXTURE_WARNING,
        "fid": frechet_distance(synth_f, real_f),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
    }
    if len(held_f) >= 2:  # what a perfect generator would score: new real images vs the training images
        ref_mean, _ = kernel_distance(real_f, held_f, config.kid_subsets, config.kid_subset_size, config.seed)
        section["real_heldout_fid"] = frechet_distance(held_f, real_f)
        section["real_heldout_kid_mean"] = ref_mean
    return section, (real_f, synth_f, held_f)


def _intensity(real_images: np.ndarray, synth_images: np.ndarray, real_fov: np.ndarray, synth_fov: np.ndarray
               ) -> dict[str, Any]:
    """Intensity and speckle statistics inside the field of view, and the histograms' distances."""
    real_stats = intensity_statistics(real_images, real_fov)
    synth_stats = intensity_statistics(synth_images, synth_fov)
    return {
        "real": {k: v for k, v in real_stats.items() if k != "histogram"},
        "synthetic": {k: v for k, v in synth_stats.items() if k != "histogram"},
        "histogram_distance": histogram_distances(real_stats["histogram"], synth_stats["histogram"]),
        "histograms": {"real": real_stats["histogram"], "synthetic": synth_stats["histogram"]},
    }


def evaluate_quality(
    real_path: str | Path,
    synthetic_path: str | Path,
    out: str | Path,
    config: QualityConfig | None = None,
    segmenter_path: str | Path | None = None,
    inception_path: str | Path | None = None,
    overwrite: bool = False,
    command: str = "",
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Write REPORT (quality.json, quality.md, memorisation.csv, report.html) atomically."""
    from sonosynth.data.validate import require_valid
    from sonosynth.evaluation.report import write_quality_report
    from sonosynth.progress import progress_bar
    from sonosynth.segmentation.train import check_compatible_labels

    config = config or QualityConfig()
    out = prepare_output(out, overwrite, inputs=[real_path, synthetic_path, segmenter_path, inception_path])
    resolve_device(device)
    real, synthetic = Dataset.open(real_path), Dataset.open(synthetic_path)
    require_valid(real, "real pairs")  # before the report folder exists
    require_valid(synthetic, "synthetic pairs")
    check_compatible_labels(real, synthetic)
    if len(synthetic) < 2 or len(real) < 2:
        raise SonosynthError(f"{synthetic.root if len(synthetic) < 2 else real.root}: need at least 2 images")
    has_splits = any(r.split for r in real.records)
    train = real.select("auto")
    held_out = real.subset(["val", "test"]) if has_splits else real.subset(ids=[])

    steps = ["images", "features", "fidelity", "diversity", "intensity", "memorisation"]
    bar = progress_bar(total=len(steps), desc="quality", disable=not progress)
    result: dict[str, Any] = {
        "real": str(Path(real_path).resolve()),
        "synthetic": str(Path(synthetic_path).resolve()),
        "real_reference": "train split" if train is not real else "all images",
        "n_real": len(train),
        "n_synthetic": len(synthetic),
        "config": asdict(config),
        "command": command,
    }
    real_images, synth_images = letterboxed_unit(train, config.size), letterboxed_unit(synthetic, config.size)
    held_images = letterboxed_unit(held_out, config.size) if len(held_out) else real_images[:0]
    bar.update(1)

    result["distribution"], (real_f, synth_f, held_f) = _distribution(real_images, synth_images, held_images,
                                                                      config, inception_path, device)
    bar.update(1)

    result["mask_fidelity"] = None
    if segmenter_path is not None:
        result["mask_fidelity"] = {"synthetic": mask_fidelity(segmenter_path, synthetic, device)}
        if len(held_out):
            result["mask_fidelity"]["real_held_out"] = mask_fidelity(segmenter_path, held_out, device)
    bar.update(1)

    synth_ssim, synth_pairs = mean_pairwise_ms_ssim(synth_images, config.max_pairs, config.seed)
    real_ssim, real_pairs = mean_pairwise_ms_ssim(real_images, config.max_pairs, config.seed)
    result["diversity"] = {
        "ms_ssim_synthetic": synth_ssim,
        "ms_ssim_real": real_ssim,
        "pairs_synthetic": synth_pairs,
        "pairs_real": real_pairs,
        "note": "mean pairwise MS-SSIM within each set; higher means less diverse",
    }
    bar.update(1)

    result["intensity"] = _intensity(real_images, synth_images, fov_masks(train, config.size),
                                     fov_masks(synthetic, config.size))
    bar.update(1)

    small = config.memorisation_size
    real_small = letterboxed_unit(train, small)
    synth_small = letterboxed_unit(synthetic, small)
    held_small = letterboxed_unit(held_out, small) if len(held_out) else real_small[:0]
    subjects = [r.subject or r.id for r in train.records]
    ref_pixel = real_reference_distances(held_small, real_small, subjects)
    ref_feature = real_reference_distances(held_f, real_f, subjects)
    rows = memorisation_table(
        [r.id for r in synthetic.records], synth_small, synth_f, [r.id for r in train.records], real_small, real_f,
        ref_pixel, ref_feature, config.near_copy_ratio,
    )
    result["memorisation"] = {
        "reference": "held-out real -> train" if len(held_out) else "leave-one-subject-out within real",
        "median_real_pixel_distance": float(np.median(ref_pixel)),
        "median_real_feature_distance": float(np.median(ref_feature)),
        "median_synthetic_pixel_ratio": float(np.median([r.pixel_ratio for r in rows])),
        "median_synthetic_feature_ratio": float(np.median([r.feature_ratio for r in rows])),
        "near_copy_ratio": config.near_copy_ratio,
        "near_copies": sum(r.near_copy for r in rows),
    }
    bar.update(1)
    bar.close()

    with output_folder(out, overwrite) as tmp:
        (tmp / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
        write_quality_report(tmp, result, [asdict(r) for r in rows], train, synthetic)
    return out
