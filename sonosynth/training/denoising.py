"""The denoising objective shared by every diffusion model sonosynth trains (its own denoisers, Stable Diffusion).

One place draws the noise and timesteps of a training batch and says what the network must predict, so a new
objective (e.g. flow matching) is written once for every model.
"""

from __future__ import annotations

from typing import Any


def noised(noise_scheduler: Any, x0: Any, generator: Any, prediction_type: str) -> tuple[Any, Any, Any]:
    """(noisy input, timesteps, target) for clean `x0`: noise, then timesteps, drawn from `generator` in that order
    (exact resume depends on it); the target is the noise (`epsilon`) or the velocity (`v_prediction`)."""
    import torch

    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                              device=x0.device)
    noisy = noise_scheduler.add_noise(x0, noise, timesteps)
    target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(x0, noise, timesteps)
    return noisy, timesteps, target
