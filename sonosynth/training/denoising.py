"""The denoising objective shared by every diffusion model sonosynth trains (its own denoisers, Stable Diffusion).

One place draws the noise and timesteps of a training batch and says what the network must predict, so a new
objective is written once for every model. Two objectives:
- diffusion (DDPM's forward process): x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise at an integer timestep t, the
  target the noise (`epsilon`) or the velocity (`v_prediction`);
- rectified flow (`flow`, as in MONAI's MAISI and Stable Diffusion 3): x_s = (1 - s) x0 + s noise on a straight
  line, s uniform in [0, 1), the network's timestep s x num_train_timesteps, the target the line's direction
  noise - x0. Its samples follow nearly straight paths, so a few Euler or DPM-Solver++ steps suffice.
"""

from __future__ import annotations

from typing import Any


def noised(noise_scheduler: Any, x0: Any, generator: Any, prediction_type: str) -> tuple[Any, Any, Any]:
    """(noisy input, timesteps, target) for clean `x0`: noise, then timesteps, drawn from `generator` in that order
    (exact resume depends on it); the target is the noise (`epsilon`), the velocity (`v_prediction`) or the flow's
    direction (`flow`)."""
    import torch

    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    if prediction_type == "flow":
        s = torch.rand((x0.shape[0],), generator=generator, device=x0.device)
        s_ = s.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return (1 - s_) * x0 + s_ * noise, s * noise_scheduler.config.num_train_timesteps, noise - x0
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                              device=x0.device)
    noisy = noise_scheduler.add_noise(x0, noise, timesteps)
    target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(x0, noise, timesteps)
    return noisy, timesteps, target
