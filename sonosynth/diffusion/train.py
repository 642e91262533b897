"""Training a mask-conditioned denoiser: one loop for CPU, one GPU and several processes (accelerate).

Resuming is exact because nothing the loop draws depends on hidden state:
- data order: micro-batch m takes positions [m*B*W, (m+1)*B*W) of an endless stream made of
  per-epoch permutations seeded from (seed, epoch); each process takes its B-slice;
- augmentation: each item's generator is seeded from (seed, stream position);
- noise, timesteps and condition dropping: a generator seeded from (seed, micro-batch, rank);
- model, EMA, optimizer, LR scheduler, grad scaler and the global RNGs are checkpointed.
So after `--resume` at step k the same batches, augmentations and noise follow.

Prediction target: v-prediction by default. With v the network's output has unit scale at every
noise level (epsilon is nearly unpredictable near t=0 and x0-like near t=T), which trains more
evenly in short CPU runs and keeps few-step samplers (DPM++ at 10-25 steps) well behaved at high
noise. `prediction_type: epsilon` is available.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sonosynth.diffusion.config import MUST_MATCH_ON_RESUME, TrainConfig
from sonosynth.diffusion.data import (
    LatentCache,
    TrainingItems,
    drop_conditions,
    open_training_pairs,
    open_unannotated,
    resolve_model_config,
    training_inputs,
    training_stream,
    unannotated_rows,
)
from sonosynth.diffusion.samples import save_pipeline, write_sample_grid
from sonosynth.seeds import derive_seed
from sonosynth.training import checkpoints as ckpt
from sonosynth.training.denoising import noised
from sonosynth.training.loop import (
    Cadence,
    OnStep,
    TrainingHooks,
    TrainResult,
    accumulated_step,
    make_optimization,
    open_run,
    refuse_existing_run,
    run_loop,
)
from sonosynth.training.run import RunFolder, model_folder

# ---- the loop --------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    on_step: OnStep | None = None,
    progress: bool = True,
    device: str = "auto",
) -> TrainResult:
    """Train (or resume) into `run_dir`; return when `config.max_steps` optimizer steps are done.

    `device`: auto lets accelerate choose (the process's GPU under `accelerate launch`/`torchrun`,
    else CUDA when there is one); cpu forces the CPU; cuda fails clearly without a GPU.

    `on_step(step, loss)` is called after every optimizer step (and after its checkpoint). If it
    returns True on any process, this step becomes the last one: the final checkpoint, sample grid
    and model are written as at `max_steps` (e.g. to stop on a time budget).

    A run that fails (an error, a non-finite loss, Ctrl-C) before its first checkpoint leaves nothing
    behind: what this call created in `run_dir` is removed. One that fails later keeps its last
    checkpoint, and the error says to continue with --resume.
    """
    return ckpt.train_cleanly(Path(run_dir), lambda looping: _train(config, Path(run_dir), resume, on_step, progress,
                                                               device, looping),
                         inputs=[config.dataset, config.autoencoder, config.init])


def _train(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    on_step: OnStep | None,
    progress: bool,
    device: str,
    looping: list[bool],
) -> TrainResult:
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import EMAModel

    started = time.perf_counter()
    pairs, fingerprint = open_training_pairs(config)
    unannotated = open_unannotated(config)  # scans without masks, if any: checked before any output exists
    vae = _latent_autoencoder(config, pairs)
    config = resolve_model_config(config, pairs, vae)

    checkpoint = ckpt.checkpoint_to_resume(run_dir, config, fingerprint, MUST_MATCH_ON_RESUME) if resume else None
    refuse_existing_run(run_dir, resume)
    accelerator = open_run(run_dir, config, device, config.log_with)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes

    model = _denoiser(config, fine_tune=checkpoint is None)
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    optimizer, lr_scheduler = make_optimization(model.parameters(), config)
    noise_scheduler = training_noise_scheduler(config)

    step = 0
    if checkpoint is not None:
        state = ckpt.restore_weights(checkpoint, model, ema)
        step = int(state["step"])
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(device)
    if vae is not None:
        vae.to(device)
    unwrapped = accelerator.unwrap_model(model)
    if checkpoint is not None:
        ckpt.restore_optimization(checkpoint, state, optimizer, lr_scheduler, accelerator)
        if state.get("world_size") != world:
            accelerator.print(f"note: resumed with {world} processes instead of {state.get('world_size')}; "
                              "the data order from here differs from the original run's")
        accelerator.print(f"resuming from {checkpoint} (step {step})")

    latents = None if vae is None or not config.latent_views else LatentCache(vae)
    views = 0 if latents is None else config.latent_views
    sampler = training_stream(len(pairs), 0 if unannotated is None else len(unannotated), config, rank, world,
                              step * config.grad_accumulation, views)
    batches = iter(TrainingItems(pairs, config, unannotated).loader(sampler, config.num_workers))
    grid_items = [pairs[i] for i in range(min(config.num_samples, len(pairs)))]

    def micro_loss(micro_batch: int) -> torch.Tensor:
        batch = next(batches)
        generator = torch.Generator(device=device).manual_seed(derive_seed(config.seed, "noise", micro_batch, rank))
        x0, condition, class_labels = training_inputs(unwrapped, batch, vae, latents)
        condition, class_labels = drop_conditions(unwrapped, condition, class_labels, config.cond_drop_prob,
                                                  generator=generator, unannotated=unannotated_rows(batch))
        noisy, timesteps, target = noised(noise_scheduler, x0, generator, config.prediction_type)
        with accelerator.autocast():
            prediction = model(noisy, timesteps, condition, class_labels)
        return F.mse_loss(prediction.float(), target.float())

    def one_step(at: int) -> dict[str, float]:
        model.train()
        first = at * config.grad_accumulation
        loss = accumulated_step(accelerator, model, optimizer, lr_scheduler, model.parameters(),
                                config.grad_accumulation, config.max_grad_norm,
                                lambda micro: micro_loss(first + micro))
        ema.step(unwrapped.parameters())
        return {"loss": loss, "lr": lr_scheduler.get_last_lr()[0]}

    def write_checkpoint(at: int) -> None:
        ckpt.save_training_state(accelerator, run_dir, at, unwrapped, ema, optimizer, lr_scheduler, config,
                                 fingerprint)

    def write_grid(at: int) -> None:
        grid_path = RunFolder(run_dir).samples / f"{ckpt.checkpoint_name(at)}.png"
        write_sample_grid(ckpt.ema_copy(unwrapped, ema), grid_items, config, grid_path, vae)

    hooks = TrainingHooks(one_step, write_checkpoint, write_grid, postfix=("loss", "lr"))
    cadence = Cadence(config.max_steps, config.checkpoint_every, config.sample_every, config.log_with)
    step, history = run_loop(accelerator, run_dir, hooks, cadence, step, checkpoint is not None, looping, on_step,
                             progress)
    model_dir = None
    if accelerator.is_main_process:
        model_dir = save_pipeline(ckpt.ema_copy(unwrapped, ema), config, RunFolder(run_dir).model, step,
                                  pairs.class_values, vae)
    accelerator.wait_for_everyone()
    if config.log_with:
        accelerator.end_training()
    return TrainResult(run_dir, step, history, model_dir, time.perf_counter() - started, unwrapped)


def _latent_autoencoder(config: TrainConfig, pairs: Any) -> Any:
    """A latent run's autoencoder, its latent scale calibrated on the first training images (None: pixel space)."""
    if not config.autoencoder:
        return None
    import torch

    from sonosynth.autoencoder.model import calibrate_scaling, load_autoencoder

    vae = load_autoencoder(config.autoencoder)
    first = torch.stack([pairs[i]["image"] for i in range(min(64, len(pairs)))])
    vae.register_to_config(scaling_factor=calibrate_scaling(vae, first))
    return vae


def _denoiser(config: TrainConfig, fine_tune: bool) -> Any:
    """The network, initialised from (seed, "init") without touching the global generator; with `init` set and
    `fine_tune` (not resuming), the earlier run's (EMA) weights."""
    import torch

    from sonosynth.models.denoiser import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "init"))
        model = build_model(config.model)
    if config.init and fine_tune:
        unet_dir = model_folder(config.init) / "unet"
        ckpt.load_init_weights(model, unet_dir / "diffusion_pytorch_model.safetensors", config.init)
    return model


def training_noise_scheduler(config: TrainConfig) -> Any:
    """DDPM's forward process for `prediction_type` (whatever sampler the run will use later); for `flow`, the
    flow-matching scheduler (only its number of training timesteps is used)."""
    from diffusers import DDPMScheduler

    from sonosynth.diffusion.schedulers import make_scheduler

    if config.prediction_type == "flow":
        return make_scheduler("euler", "flow", config.num_train_timesteps)
    scheduler = make_scheduler("ddpm", config.prediction_type, config.num_train_timesteps)
    return scheduler if isinstance(scheduler, DDPMScheduler) else DDPMScheduler.from_config(scheduler.config)
