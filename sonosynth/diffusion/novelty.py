"""How unlike its training images an image is, to a trained denoiser: a one-class anomaly score.

A diffusion model trained on one kind of image (say benign breast lesions) predicts the noise (or velocity, or
flow) of noised versions of such images well and of unfamiliar ones worse; the mean squared error of that
prediction, under the null condition (no mask is known at test time) at a few fixed noise levels, is a
reconstruction-error score in the manner of diffusion-based anomaly detection (AnoDDPM, Wyatt et al. 2022). It needs
nothing but the generator the protocol already trains, and it never sees an abnormal image: the baseline a detector
of anomalies without abnormal data is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sonosynth.errors import SonosynthError


def denoising_error(run: str | Path, images: Sequence[np.ndarray], timesteps: Sequence[int] = (100, 250, 500),
                    seed: int = 0, batch_size: int = 16) -> np.ndarray:
    """(N,) mean squared denoising error of each image (original grid, any size) for the run's EMA model, averaged
    over `timesteps` (out of the run's training timesteps) with noise drawn from `seed` per image position."""
    import torch

    from sonosynth.data.imageio import pixels_to_unit
    from sonosynth.data.transforms import field_of_view, letterbox_image, letterbox_mask
    from sonosynth.diffusion.config import TrainConfig
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.training.run import RunFolder

    folder = RunFolder(run)
    config = TrainConfig.from_yaml(folder.config_yaml)
    if config.autoencoder or config.model.kind == "joint":
        raise SonosynthError(f"{run}: the denoising-error score needs a pixel, mask-conditioned generator (not a "
                             "latent or joint one)")
    pipe = MaskToUltrasoundPipeline.from_pretrained(folder.model)
    model = pipe.unet.eval()
    size, steps = config.size, config.num_train_timesteps
    if any(not 0 <= t < steps for t in timesteps):
        raise SonosynthError(f"timesteps must lie in [0, {steps}), got {list(timesteps)}")
    from sonosynth.diffusion.train import training_noise_scheduler
    from sonosynth.seeds import derive_seed

    scheduler = training_noise_scheduler(config)
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            x0 = torch.stack([letterbox_image(pixels_to_unit(im) * 2.0, size)[None] - 1.0 for im in chunk])
            fov = torch.stack([letterbox_mask(field_of_view(im).astype(np.uint8), size)[None].float() for im in chunk])
            labels = torch.zeros(len(chunk), size, size, dtype=torch.long)
            condition = model.null_condition(model.make_condition(labels, fov=fov))
            classes = None if not model.model_config.class_cardinalities else \
                model.null_class_labels.expand(len(chunk), -1)
            error = torch.zeros(len(chunk))
            for t in timesteps:
                noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(
                    derive_seed(seed, "novelty", start + i, int(t)))) for i in range(len(chunk))])
                noisy, target = _noised_at(scheduler, x0, noise, int(t), config.prediction_type, steps)
                timestep = torch.full((len(chunk),), float(t) if config.prediction_type == "flow" else int(t))
                prediction = model(noisy, timestep, condition, classes)
                error += ((prediction - target) ** 2).mean(dim=(1, 2, 3))
            scores.append(error / len(timesteps))
    return torch.cat(scores).numpy() if scores else np.zeros(0)


def _noised_at(scheduler, x0, noise, t: int, prediction_type: str, steps: int):  # noqa: ANN001, ANN202
    """(noisy input, target) at timestep t: `training.denoising.noised` with the timestep fixed instead of drawn."""
    import torch

    if prediction_type == "flow":
        s = t / steps
        return (1 - s) * x0 + s * noise, noise - x0
    timesteps = torch.full((x0.shape[0],), t, dtype=torch.long)
    noisy = scheduler.add_noise(x0, noise, timesteps)
    return noisy, noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, timesteps)
