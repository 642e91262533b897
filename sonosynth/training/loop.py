"""The one training loop every model of sonosynth runs: the denoiser, the Stable Diffusion fine-tunes, the autoencoder.

As diffusers' training examples share `accelerate`, the three trainers share this skeleton and enter it with
only what is theirs: `TrainingHooks.step` (one optimizer step: their data, objective and optimizers) and their
save hooks (a checkpoint, a sample grid). The loop owns what must be the same everywhere:

- the accelerate set-up (CPU, one GPU, several processes; mixed precision; trackers),
- refusing to start over a run already in the folder (`--resume` continues it),
- step bookkeeping, non-finite losses, the progress bar and `loss.csv`,
- checkpoint and sample-grid cadence, a last checkpoint and grid at the end,
- the stop hook (`on_step` returning True on any process ends the run as at `max_steps`).

Exact resume stays each trainer's business (its stream and noise are functions of the step), as does the
failure clean-up (`checkpoints.train_cleanly`, around the whole call).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sonosynth.errors import SonosynthError
from sonosynth.training import checkpoints as ckpt
from sonosynth.training.run import RunFolder

OnStep = Callable[[int, float], "bool | None"]


@dataclass
class TrainResult:
    """What a training call did: `history` holds one row of loss terms per optimizer step run in this call."""

    run_dir: Path
    step: int
    history: list[dict[str, float]]
    model_dir: Path | None
    seconds: float
    model: Any = None  # the trained (not averaged) network, unwrapped; EMA weights are in model_dir

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.history]


@dataclass
class TrainingHooks:
    """What one trainer brings to the loop.

    `step(step)`: run optimizer step number `step + 1` (all its micro-batches, on every process) and return its
    loss terms as floats, "loss" first (already averaged over processes); `save_checkpoint(step)`: runs on
    every process; `write_grid(step)`: runs on the main process only."""

    step: Callable[[int], dict[str, float]]
    save_checkpoint: Callable[[int], None]
    write_grid: Callable[[int], None]
    postfix: Sequence[str] = ("loss",)  # terms shown beside the progress bar


@dataclass
class Cadence:
    """How far and how often: a config's `max_steps`, `checkpoint_every`, `sample_every`."""

    max_steps: int
    checkpoint_every: int
    sample_every: int
    log_with: str | None = None
    columns: Sequence[str] = field(default=("step", "loss", "lr"))  # loss.csv


def mixed_precision_for(setting: str) -> str:
    """`auto`: bf16 (else fp16) on a GPU, none on the CPU."""
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def refuse_existing_run(run_dir: Path, resume: bool) -> None:
    if not resume and (ckpt.list_checkpoints(run_dir) or RunFolder(run_dir).model.exists()):
        raise SonosynthError(f"{run_dir}: already holds a training run (use --resume, or another --out)")


def open_run(run_dir: Path, config: Any, device: str, log_with: str | None = None) -> Any:
    """The accelerator for this run and its folder with config.yaml (main process).

    `device`: auto lets accelerate choose (the process's GPU under `accelerate launch`/`torchrun`, else CUDA when
    there is one); cpu forces the CPU; cuda fails clearly without a GPU."""
    import torch
    from accelerate import Accelerator

    from sonosynth.devices import resolve_device

    if log_with == "tensorboard":
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
        log_with=log_with,
        project_dir=str(run_dir),
    )
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(RunFolder(run_dir).config_yaml)
    if log_with:
        accelerator.init_trackers("train", config={k: str(v) for k, v in config.to_dict().items()})
    return accelerator


def make_optimization(parameters: Any, config: Any) -> tuple[Any, Any]:
    """AdamW and its learning-rate schedule for a config with `lr`, `weight_decay`, `lr_schedule` (cosine, else
    constant), `warmup_steps` and `max_steps`: diffusers' schedules, with warm-up."""
    import torch
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(config.lr_schedule if config.lr_schedule == "cosine" else "constant_with_warmup",
                                 optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps)
    return optimizer, lr_scheduler


def accumulated_step(accelerator: Any, model: Any, optimizer: Any, lr_scheduler: Any, parameters: list[Any],
                     grad_accumulation: int, max_grad_norm: float | None,
                     micro_loss: Callable[[int], Any]) -> float:
    """One optimizer step over `grad_accumulation` micro-batches (`micro_loss(micro)` returns each one's loss);
    gradients are synchronised across processes on the last one only. Returns the mean loss over processes."""
    import torch

    total = torch.zeros((), device=accelerator.device)
    for micro in range(grad_accumulation):
        sync = nullcontext() if micro == grad_accumulation - 1 else accelerator.no_sync(model)
        with sync:
            loss = micro_loss(micro)
            accelerator.backward(loss / grad_accumulation)
        total += loss.detach() / grad_accumulation
    if max_grad_norm:
        accelerator.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(accelerator.reduce(total, reduction="mean"))


def run_loop(accelerator: Any, run_dir: Path, hooks: TrainingHooks, cadence: Cadence, start: int, resumed: bool,
             looping: list[bool], on_step: OnStep | None = None, progress: bool = True,
             desc: str = "train") -> tuple[int, list[dict[str, float]]]:
    """Step from `start` to `cadence.max_steps` (or until `on_step` says stop); return the last step and the loss
    rows of this call. A last checkpoint and grid are written unless the last step already has them."""
    import torch

    from sonosynth.progress import progress_bar

    main = accelerator.is_main_process
    bar = progress_bar(total=cadence.max_steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
                       disable=not (progress and main))
    loss_log = LossLog(RunFolder(run_dir).loss_csv, start, cadence.columns) if main else None
    history: list[dict[str, float]] = []
    step, last_checkpoint, last_grid = start, start if resumed else -1, -1
    looping.append(True)
    while step < cadence.max_steps:
        row = hooks.step(step)
        step += 1
        if not math.isfinite(row["loss"]):
            raise SonosynthError(f"{run_dir}: the loss became {row['loss']} at step {step}; lower the learning rate")
        history.append(row)
        bar.update(1)
        bar.set_postfix({name: f"{row[name]:.2e}" if name == "lr" else f"{row[name]:.4f}"
                         for name in hooks.postfix})
        if loss_log is not None:
            loss_log.add({"step": step, **row})
        if cadence.log_with:
            accelerator.log(row, step=step)
        if step % cadence.checkpoint_every == 0:
            hooks.save_checkpoint(step)
            last_checkpoint = step
        if step % cadence.sample_every == 0 and main:
            hooks.write_grid(step)
            last_grid = step
        accelerator.wait_for_everyone()
        if on_step is not None:
            stop = torch.tensor(float(bool(on_step(step, row["loss"]))), device=accelerator.device)
            if float(accelerator.reduce(stop, reduction="sum")) > 0:
                break
    bar.close()
    if last_checkpoint != step:
        hooks.save_checkpoint(step)
    if last_grid != step and main:
        hooks.write_grid(step)
    return step, history


class LossLog:
    """RUN/loss.csv: one row per optimizer step. Rows past `start` (a run killed after its checkpoint) are dropped."""

    def __init__(self, path: Path, start: int, columns: Sequence[str] = ("step", "loss", "lr")):
        self.path, self.columns = path, list(columns)
        rows = []
        if path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step") and int(r["step"]) <= start]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def add(self, row: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore").writerow(
                {k: (int(v) if k == "step" else f"{v:.6g}") for k, v in row.items()})
