"""How faithful an autoencoder is on held-out images: what issue 15 asks of it before latent diffusion uses it.

Each image is letterboxed to the autoencoder's size, encoded (the posterior's mode) and decoded; then:
- PSNR and SSIM (MONAI `PSNRMetric`, `SSIMMetric`, data range 1) over the square;
- speckle SNR (mean / standard deviation of the brightness inside the field of view), of the image and of
  its reconstruction, and their relative change: a blurring autoencoder raises it;
- the intensity histogram (64 bins, inside the field of view): the L1 distance between the two normalised
  histograms (0 = identical, 2 = disjoint);
- with a segmenter run: its Dice on the reconstructions against the real masks, beside its Dice on the
  originals (a reconstruction that keeps the anatomy keeps the Dice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sonosynth.errors import SonosynthError

HISTOGRAM_BINS = 64


def speckle_snr(unit: torch.Tensor, inside: torch.Tensor) -> float:
    values = unit[inside]
    return float(values.mean() / values.std().clamp_min(1e-6)) if values.numel() > 1 else float("nan")


def histogram_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    ha = torch.histc(a, bins=HISTOGRAM_BINS, min=0.0, max=1.0)
    hb = torch.histc(b, bins=HISTOGRAM_BINS, min=0.0, max=1.0)
    return float((ha / ha.sum().clamp_min(1) - hb / hb.sum().clamp_min(1)).abs().sum())


@torch.no_grad()
def evaluate_autoencoder(autoencoder: str | Path, dataset: str | Path, split: str = "test",
                         segmenter: str | Path | None = None, device: str = "cpu",
                         progress: bool = True) -> dict[str, Any]:
    """Mean reconstruction measures over the `split` images of `dataset` (see the module docstring)."""
    from monai.metrics import PSNRMetric, SSIMMetric

    from sonosynth.autoencoder.model import load_autoencoder
    from sonosynth.data.format import Dataset
    from sonosynth.data.torch_dataset import LetterboxedPairs
    from sonosynth.data.validate import require_valid
    from sonosynth.devices import resolve_device
    from sonosynth.metrics import dice_per_label
    from sonosynth.progress import progress_bar

    torch_device = resolve_device(device)
    vae = load_autoencoder(str(autoencoder)).to(torch_device)
    size = int(vae.config.sample_size)
    chosen = Dataset.open(dataset).select(split, what="images to evaluate on")
    require_valid(chosen, "images to evaluate on")
    pairs = LetterboxedPairs(chosen, size)
    seg = None
    if segmenter is not None:
        from sonosynth.segmentation.predict import load_segmenter, predict_masks

        seg = load_segmenter(segmenter, torch_device)
        if seg.num_labels != chosen.info.num_labels:
            raise SonosynthError(f"{segmenter}: {seg.num_labels} labels, but {chosen.root} has "
                                 f"{chosen.info.num_labels}")
    psnr, ssim = PSNRMetric(max_val=1.0), SSIMMetric(spatial_dims=2, data_range=1.0)
    rows: dict[str, list[float]] = {k: [] for k in ("psnr", "ssim", "snr_real", "snr_reconstruction", "histogram_l1",
                                                    "dice_original", "dice_reconstruction")}
    for index in progress_bar(range(len(pairs)), desc="autoencoder evaluation", disable=not progress):
        item = pairs[index]
        image = item["image"][None].to(torch_device)
        reconstruction = vae.decode(vae.encode(image).latent_dist.mode()).sample.clamp(-1, 1)
        real_unit, recon_unit = (image + 1) / 2, (reconstruction + 1) / 2
        rows["psnr"].append(float(psnr(recon_unit, real_unit).mean()))
        rows["ssim"].append(float(ssim(recon_unit, real_unit).mean()))
        inside = item["fov"][0].to(torch_device) > 0.5
        rows["snr_real"].append(speckle_snr(real_unit[0, 0], inside))
        rows["snr_reconstruction"].append(speckle_snr(recon_unit[0, 0], inside))
        rows["histogram_l1"].append(histogram_l1(real_unit[0, 0][inside], recon_unit[0, 0][inside]))
        if seg is not None:
            truth = item["label"].numpy()
            for key, x in (("dice_original", image), ("dice_reconstruction", reconstruction)):
                predicted = predict_masks(seg, [x[0, 0].cpu().numpy()])[0]
                rows[key].append(float(np.nanmean(list(dice_per_label(predicted, truth, chosen.info.num_labels)
                                                        .values()))))
    result = {k: float(np.nanmean(v)) for k, v in rows.items() if v}
    result["snr_change"] = result["snr_reconstruction"] / result["snr_real"] - 1.0
    return {"autoencoder": str(autoencoder), "dataset": str(chosen.root), "split": split, "images": len(pairs),
            "size": size, **result}
