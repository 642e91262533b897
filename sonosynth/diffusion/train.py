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

import csv
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonosynth.devices import resolve_device
from sonosynth.diffusion.checkpoints import train_cleanly
from sonosynth.diffusion.config import TrainConfig
from sonosynth.diffusion.data import (
    LatentCache,
    StreamBatchSampler,
    TrainingItems,
    drop_conditions,
    open_training_pairs,
    resolve_model_config,
    training_inputs,
)
from sonosynth.diffusion.run import RunFolder
from sonosynth.diffusion.samples import save_pipeline, write_sample_grid
from sonosynth.errors import SonosynthError
from sonosynth.seeds import derive_seed


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    losses: list[float]  # mean loss of each optimizer step run in this call
    model_dir: Path | None
    seconds: float
    model: Any = None  # the trained (not averaged) network, unwrapped; EMA weights are in model_dir


# ---- the loop --------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    on_step: Callable[[int, float], bool | None] | None = None,
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
    return train_cleanly(Path(run_dir), lambda looping: _train(config, Path(run_dir), resume, on_step, progress,
                                                               device, looping),
                         inputs=[config.dataset, config.autoencoder, config.init])


def _train(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    on_step: Callable[[int, float], bool | None] | None,
    progress: bool,
    device: str,
    looping: list[bool],
) -> TrainResult:
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from sonosynth.diffusion import checkpoints as ckpt
    from sonosynth.diffusion.schedulers import make_scheduler
    from sonosynth.models.configs import build_model
    from sonosynth.progress import progress_bar

    started = time.perf_counter()
    pairs, fingerprint = open_training_pairs(config)
    vae = None
    if config.autoencoder:
        from sonosynth.autoencoder.model import calibrate_scaling, load_autoencoder

        vae = load_autoencoder(config.autoencoder)
        first = torch.stack([pairs[i]["image"] for i in range(min(64, len(pairs)))])
        vae.register_to_config(scaling_factor=calibrate_scaling(vae, first))
    config = resolve_model_config(config, pairs, vae)

    checkpoint = ckpt.checkpoint_to_resume(run_dir, config, fingerprint) if resume else None
    folder = RunFolder(run_dir)
    if not resume and (ckpt.list_checkpoints(run_dir) or folder.model.exists()):
        raise SonosynthError(f"{run_dir}: already holds a training run (use --resume, or another --out)")
    if config.log_with == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise SonosynthError("log_with=tensorboard needs the tensorboard package (pip install tensorboard)") \
                from None

    resolve_device(device)  # a clear error for an unknown name or cuda without a GPU
    accelerator = Accelerator(
        # Under torchrun without a GPU, accelerate only sets up gloo multi-CPU training when told `cpu`.
        cpu=device == "cpu" or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1),
        mixed_precision=mixed_precision_for(config.mixed_precision),
        log_with=config.log_with,
        project_dir=str(run_dir),
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(folder.config_yaml)
    if config.log_with:
        accelerator.init_trackers("train", config={k: str(v) for k, v in config.to_dict().items()})

    with torch.random.fork_rng(devices=[]):  # weight init draws from the global generator; leave it as it was
        torch.manual_seed(derive_seed(config.seed, "init"))
        model = build_model(config.model)
    if config.init and checkpoint is None:  # fine-tuning: the earlier run's (EMA) weights, then this config
        from sonosynth.diffusion.run import model_folder

        unet_dir = model_folder(config.init) / "unet"
        ckpt.load_init_weights(model, unet_dir / "diffusion_pytorch_model.safetensors", config.init)
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(
        config.lr_schedule if config.lr_schedule == "cosine" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=config.max_steps,
    )
    noise_scheduler = make_scheduler("ddpm", config.prediction_type, config.num_train_timesteps)
    if not isinstance(noise_scheduler, DDPMScheduler):
        noise_scheduler = DDPMScheduler.from_config(noise_scheduler.config)

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
    sampler = StreamBatchSampler(len(pairs), config.batch_size, config.seed, rank, world,
                                 start=step * config.grad_accumulation, views=views)
    loader = torch.utils.data.DataLoader(
        TrainingItems(pairs, config),
        batch_sampler=sampler,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
    )
    batches = iter(loader)
    grid_items = [pairs[i] for i in range(min(config.num_samples, len(pairs)))]

    def write_checkpoint(at_step: int) -> None:
        ckpt.save_training_state(accelerator, run_dir, at_step, unwrapped, ema, optimizer, lr_scheduler, config,
                                 fingerprint)

    last_grid = -1

    def write_grid(at_step: int) -> None:
        nonlocal last_grid
        grid_path = folder.samples / f"{ckpt.checkpoint_name(at_step)}.png"
        write_sample_grid(ckpt.ema_copy(unwrapped, ema), grid_items, config, grid_path, vae)
        last_grid = at_step

    losses: list[float] = []
    bar = progress_bar(total=config.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (progress and accelerator.is_main_process))
    loss_log = LossLog(folder.loss_csv, step) if accelerator.is_main_process else None
    last_checkpoint = step if checkpoint is not None else -1
    looping.append(True)
    while step < config.max_steps:
        model.train()
        total = torch.zeros((), device=device)
        for micro in range(config.grad_accumulation):
            micro_batch = step * config.grad_accumulation + micro
            batch = next(batches)
            generator = torch.Generator(device=device).manual_seed(derive_seed(config.seed, "noise", micro_batch, rank))
            x0, condition, class_labels = training_inputs(unwrapped, batch, vae, latents)
            condition, class_labels = drop_conditions(unwrapped, condition, class_labels, config.cond_drop_prob,
                                                                generator=generator)
            noise = torch.randn(x0.shape, generator=generator, device=device)
            timesteps = torch.randint(0, config.num_train_timesteps, (x0.shape[0],), generator=generator,
                                      device=device)
            noisy = noise_scheduler.add_noise(x0, noise, timesteps)
            if config.prediction_type == "epsilon":
                target = noise
            else:
                target = noise_scheduler.get_velocity(x0, noise, timesteps)
            sync = nullcontext() if micro == config.grad_accumulation - 1 else accelerator.no_sync(model)
            with sync:
                with accelerator.autocast():
                    prediction = model(noisy, timesteps, condition, class_labels)
                loss = F.mse_loss(prediction.float(), target.float())
                accelerator.backward(loss / config.grad_accumulation)
            total += loss.detach() / config.grad_accumulation
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(unwrapped.parameters())
        step += 1

        loss_value = float(accelerator.reduce(total, reduction="mean"))
        if not math.isfinite(loss_value):
            raise SonosynthError(f"{run_dir}: the loss became {loss_value} at step {step}; lower the learning rate")
        losses.append(loss_value)
        lr = lr_scheduler.get_last_lr()[0]
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        if loss_log is not None:
            loss_log.add(step, loss_value, lr)
        if config.log_with:
            accelerator.log({"loss": loss_value, "lr": lr}, step=step)

        if step % config.checkpoint_every == 0:
            write_checkpoint(step)
            last_checkpoint = step
        if step % config.sample_every == 0 and accelerator.is_main_process:
            write_grid(step)
        accelerator.wait_for_everyone()
        if on_step is not None:
            stop = torch.tensor(float(bool(on_step(step, loss_value))), device=device)
            if float(accelerator.reduce(stop, reduction="sum")) > 0:
                break
    bar.close()
    # The end: a final checkpoint and grid unless this very step already has them.
    if last_checkpoint != step:
        write_checkpoint(step)
    if last_grid != step and accelerator.is_main_process:
        write_grid(step)

    model_dir = None
    if accelerator.is_main_process:
        model_dir = save_pipeline(ckpt.ema_copy(unwrapped, ema), config, folder.model, step, pairs.class_values,
                                  vae)
    accelerator.wait_for_everyone()
    if config.log_with:
        accelerator.end_training()
    return TrainResult(run_dir, step, losses, model_dir, time.perf_counter() - started, unwrapped)


# ---- helpers ---------------------------------------------------------------------------------------


def mixed_precision_for(setting: str) -> str:
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


class LossLog:
    """RUN/loss.csv: step, loss, lr. Rows past `start` (from a run killed after its checkpoint) are dropped."""

    def __init__(self, path: Path, start: int):
        self.path = path
        rows = []
        if path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.reader(fh) if r and r[0] != "step" and int(r[0]) <= start]
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([["step", "loss", "lr"], *rows])

    def add(self, step: int, loss: float, lr: float) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([step, f"{loss:.6g}", f"{lr:.6g}"])


