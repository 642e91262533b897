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

import copy
import csv
import hashlib
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sonosynth.devices import resolve_device
from sonosynth.diffusion.augment import AugmentConfig
from sonosynth.diffusion.run import RunFolder
from sonosynth.errors import SonosynthError
from sonosynth.models.configs import SIZE_PRESETS, ModelConfig

PREDICTION_TYPES = ("v_prediction", "epsilon")
LR_SCHEDULES = ("cosine", "constant")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")

# Changing these makes a checkpoint unloadable or changes what the next batches are.
MUST_MATCH_ON_RESUME = (
    "model",
    "image_size",
    "patch_size",
    "batch_size",
    "grad_accumulation",
    "prediction_type",
    "num_train_timesteps",
    "class_attributes",
    "split",
    "seed",
    "lr_schedule",
)


@dataclass
class TrainConfig:
    """Everything that determines a training run; saved as RUN/config.yaml.

    Defaults suit a CPU run of the `small` model at 64 px.
    """

    dataset: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    image_size: int = 64
    patch_size: int | None = None  # None: whole images; else random patches with coordinate channels
    batch_size: int = 8
    grad_accumulation: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "cosine"
    max_steps: int = 2000
    max_grad_norm: float = 1.0
    ema_decay: float = 0.995
    prediction_type: str = "v_prediction"
    num_train_timesteps: int = 1000
    cond_drop_prob: float = 0.1
    class_attributes: list[str] = field(default_factory=list)
    split: str = "auto"  # auto: the `train` split when the dataset has one, else every pair
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    sample_every: int = 500
    num_samples: int = 4
    sample_steps: int = 20
    guidance_scale: float = 1.5
    seed: int = 0
    mixed_precision: str = "auto"  # auto: bf16 (or fp16) on a GPU, none on CPU
    num_workers: int = 0
    log_with: str | None = None  # "tensorboard" (needs the tensorboard package)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_dict(self.augment)
        self.class_attributes = [str(a) for a in self.class_attributes]
        problems = []
        if self.prediction_type not in PREDICTION_TYPES:
            problems.append(f"prediction_type must be one of {list(PREDICTION_TYPES)}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {list(LR_SCHEDULES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision must be one of {list(MIXED_PRECISION)}")
        if self.log_with not in (None, "tensorboard"):
            problems.append("log_with must be empty or 'tensorboard'")
        for name in ("image_size", "batch_size", "grad_accumulation", "max_steps", "checkpoint_every", "sample_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be at least 1")
        if self.patch_size is not None and not 0 < self.patch_size <= self.image_size:
            problems.append(f"patch_size must be between 1 and image_size ({self.image_size})")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            problems.append("cond_drop_prob must be in [0, 1)")
        if problems:
            raise SonosynthError("invalid training config: " + "; ".join(problems))

    @property
    def train_size(self) -> int:
        """Side of the squares the network sees during training."""
        return self.patch_size or self.image_size

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        data["augment"] = self.augment.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> TrainConfig:
        from sonosynth.settings import strict_from_dict

        return strict_from_dict(cls, data, origin, "training config")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_yaml_mapping(path), origin=str(path))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(self.to_yaml())
        os.replace(tmp, path)


def read_yaml_mapping(path: str | Path, what: str = "training config") -> dict[str, Any]:
    """A YAML file's top-level mapping, with a one-line error naming the file (and `what` it holds)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise SonosynthError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SonosynthError(f"{path}: invalid YAML{where} ({getattr(exc, 'problem', None) or 'syntax error'})") \
            from None
    if not isinstance(data, dict):
        raise SonosynthError(f"{path}: a {what} must be a YAML mapping")
    return data


def with_model_size(model: ModelConfig, size: str | None = None, kind: str | None = None) -> ModelConfig:
    """A model config with another size preset/kind: the preset's width/depth fields are re-resolved."""
    data = {k: v for k, v in model.to_dict().items() if k not in SIZE_PRESETS[model.size]}
    if size is not None:
        data["size"] = size
    if kind is not None:
        data["kind"] = kind
    return ModelConfig.from_dict(data)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    losses: list[float]  # mean loss of each optimizer step run in this call
    model_dir: Path | None
    seconds: float
    model: Any = None  # the trained (not averaged) network, unwrapped; EMA weights are in model_dir


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from the run seed and a purpose, reproducible across processes and platforms."""
    words = [int(p) if isinstance(p, int) else int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little")
             for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


# ---- data ------------------------------------------------------------------------------------------


class StreamBatchSampler:
    """Endless per-process batches of (dataset index, augmentation seed), from micro-batch `start`.

    The stream is a concatenation of permutations, one per epoch, seeded from (seed, epoch), so
    it is a pure function of the position and a resumed run picks up exactly where it stopped.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self._epoch, self._order = -1, np.arange(0)

    def _item(self, position: int) -> int:
        epoch = position // self.num_items
        if epoch != self._epoch:
            rng = np.random.default_rng(derive_seed(self.seed, "order", epoch))
            self._epoch, self._order = epoch, rng.permutation(self.num_items)
        return int(self._order[position % self.num_items])

    def batch(self, micro_batch: int) -> list[tuple[int, int]]:
        first = (micro_batch * self.world_size + self.rank) * self.batch_size
        return [(self._item(p), derive_seed(self.seed, "augment", p)) for p in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        micro_batch = self.start
        while True:
            yield self.batch(micro_batch)
            micro_batch += 1


class TrainingItems:
    """Letterboxed pairs with coordinates, augmentation and patch cropping, indexed by (index, seed)."""

    def __init__(self, pairs: Any, config: TrainConfig):
        self.pairs, self.config = pairs, config

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        import torch

        from sonosynth.diffusion.augment import augment_pair, random_crop
        from sonosynth.models.denoiser import coordinate_channels

        index, seed = key
        item = dict(self.pairs[index])
        if self.config.model.coord_channels:
            item["coords"] = coordinate_channels(1, self.config.image_size)[0]
        generator = torch.Generator().manual_seed(seed)
        item = augment_pair(item, generator, self.config.augment)
        if self.config.patch_size and self.config.patch_size < self.config.image_size:
            item = random_crop(item, self.config.patch_size, generator)
        return item


def open_training_pairs(config: TrainConfig) -> tuple[Any, str]:
    """(LetterboxedPairs over the training records, fingerprint of those records)."""
    from sonosynth.data.format import MANIFEST_CSV, Dataset
    from sonosynth.data.torch_dataset import LetterboxedPairs

    if not config.dataset:
        raise SonosynthError("no dataset given")
    chosen = Dataset.open(config.dataset).select(config.split, what="pairs to train on")
    try:
        pairs = LetterboxedPairs(chosen, config.image_size, class_attributes=config.class_attributes)
    except ValueError as exc:
        raise SonosynthError(str(exc)) from None
    digest = hashlib.sha256((Path(config.dataset) / MANIFEST_CSV).read_bytes())
    digest.update(",".join(r.id for r in chosen.records).encode())
    return pairs, digest.hexdigest()[:16]


def resolve_model_config(config: TrainConfig, pairs: Any) -> TrainConfig:
    """Fill what the data decides: number of labels, attribute cardinalities, coordinate channels."""
    info = pairs.dataset.info
    model = replace(
        config.model,
        num_labels=info.num_labels,
        class_cardinalities=[len(pairs.class_values[name]) for name in config.class_attributes],
        coord_channels=config.model.coord_channels or bool(config.patch_size and config.patch_size < config.image_size),
    )
    factor = model.downsampling_factor
    for name in ("image_size", "patch_size"):
        value = getattr(config, name)
        if value is not None and value % factor:
            raise SonosynthError(f"{name}={value} must be a multiple of {factor} for the '{model.size}' model")
    return replace(config, model=model)


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
    """
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from sonosynth.diffusion import checkpoints as ckpt
    from sonosynth.diffusion.schedulers import make_scheduler
    from sonosynth.models.configs import build_model

    started = time.perf_counter()
    run_dir = Path(run_dir)
    pairs, fingerprint = open_training_pairs(config)
    config = resolve_model_config(config, pairs)

    checkpoint = _checkpoint_to_resume(run_dir, config, fingerprint) if resume else None
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
        mixed_precision=_mixed_precision(config.mixed_precision),
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
        state = ckpt.read_state(checkpoint)
        model.load_state_dict(ckpt.load_tensors(checkpoint / "model.safetensors"))
        names = [n for n, _ in model.named_parameters()]
        shadow = ckpt.load_tensors(checkpoint / "ema.safetensors")
        ema.load_state_dict({**state["ema"], "shadow_params": [shadow[n] for n in names]})
        step = int(state["step"])
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(device)
    unwrapped = accelerator.unwrap_model(model)
    if checkpoint is not None:
        optimizer.load_state_dict(
            ckpt.unflatten_optimizer_state(
                ckpt.load_tensors(checkpoint / "optimizer.safetensors", device), state["optimizer"]
            )
        )
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if accelerator.scaler is not None and state.get("grad_scaler"):
            accelerator.scaler.load_state_dict(state["grad_scaler"])
        rng_file = checkpoint / f"rng-rank{rank}.safetensors"
        if rng_file.is_file():
            ckpt.restore_rng_state(ckpt.load_tensors(rng_file), state["rng"][str(rank)])
        if state.get("world_size") != world:
            accelerator.print(f"note: resumed with {world} processes instead of {state.get('world_size')}; "
                              "the data order from here differs from the original run's")
        accelerator.print(f"resuming from {checkpoint} (step {step})")

    sampler = StreamBatchSampler(len(pairs), config.batch_size, config.seed, rank, world,
                                 start=step * config.grad_accumulation)
    loader = torch.utils.data.DataLoader(
        TrainingItems(pairs, config),
        batch_sampler=sampler,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
    )
    batches = iter(loader)
    grid_items = [pairs[i] for i in range(min(config.num_samples, len(pairs)))]

    def write_checkpoint(at_step: int) -> None:
        if accelerator.is_main_process:
            ckpt.begin_checkpoint(run_dir, at_step)
        accelerator.wait_for_everyone()
        tmp = run_dir / ckpt.CHECKPOINTS_DIR / f"{ckpt.checkpoint_name(at_step)}.tmp"
        rng_tensors, rng_meta = ckpt.capture_rng_state()
        ckpt.save_tensors(tmp / f"rng-rank{rank}.safetensors", rng_tensors)
        rng_metas = gather_object([rng_meta]) if world > 1 else [rng_meta]
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            names = [n for n, _ in unwrapped.named_parameters()]
            ckpt.save_tensors(tmp / "model.safetensors", unwrapped.state_dict())
            ckpt.save_tensors(tmp / "ema.safetensors", dict(zip(names, ema.shadow_params, strict=True)))
            opt_tensors, opt_meta = ckpt.flatten_optimizer_state(optimizer.state_dict())
            ckpt.save_tensors(tmp / "optimizer.safetensors", opt_tensors)
            ema_meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
            state = {
                "step": at_step,
                "world_size": world,
                "dataset_fingerprint": fingerprint,
                "config": config.to_dict(),
                "optimizer": opt_meta,
                "lr_scheduler": _jsonable(lr_scheduler.state_dict()),
                "ema": ema_meta,
                "grad_scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "rng": {str(r): meta for r, meta in enumerate(rng_metas)},
            }
            ckpt.finish_checkpoint(tmp, state, config.keep_checkpoints)
        accelerator.wait_for_everyone()

    last_grid = -1

    def write_grid(at_step: int) -> None:
        nonlocal last_grid
        grid_path = folder.samples / f"{ckpt.checkpoint_name(at_step)}.png"
        _write_sample_grid(_ema_copy(unwrapped, ema), grid_items, config, grid_path)
        last_grid = at_step

    losses: list[float] = []
    bar = tqdm(total=config.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (progress and accelerator.is_main_process))
    loss_log = _LossLog(folder.loss_csv, step) if accelerator.is_main_process else None
    last_checkpoint = step if checkpoint is not None else -1
    while step < config.max_steps:
        model.train()
        total = torch.zeros((), device=device)
        for micro in range(config.grad_accumulation):
            micro_batch = step * config.grad_accumulation + micro
            batch = next(batches)
            generator = torch.Generator(device=device).manual_seed(derive_seed(config.seed, "noise", micro_batch, rank))
            x0, condition, class_labels = unwrapped.training_inputs(batch)
            condition, class_labels = unwrapped.drop_conditions(condition, class_labels, config.cond_drop_prob,
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
        model_dir = save_pipeline(_ema_copy(unwrapped, ema), config, folder.model, step, pairs.class_values)
    accelerator.wait_for_everyone()
    if config.log_with:
        accelerator.end_training()
    return TrainResult(run_dir, step, losses, model_dir, time.perf_counter() - started, unwrapped)


# ---- helpers ---------------------------------------------------------------------------------------


def _mixed_precision(setting: str) -> str:
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None  # e.g. the LR lambdas, which are rebuilt from the config


def _checkpoint_to_resume(run_dir: Path, config: TrainConfig, fingerprint: str) -> Path | None:
    from sonosynth.diffusion import checkpoints as ckpt

    checkpoint = ckpt.latest_checkpoint(run_dir)
    if checkpoint is None:
        return None
    state = ckpt.read_state(checkpoint)
    saved = TrainConfig.from_dict(state["config"], origin=str(checkpoint))
    differing = [name for name in MUST_MATCH_ON_RESUME
                 if _normalised(getattr(saved, name)) != _normalised(getattr(config, name))]
    if differing:
        details = ", ".join(f"{n}: {_normalised(getattr(saved, n))!r} -> {_normalised(getattr(config, n))!r}"
                            for n in differing)
        raise SonosynthError(f"{checkpoint}: cannot resume, the config changed ({details})")
    if state.get("dataset_fingerprint") != fingerprint:
        raise SonosynthError(f"{checkpoint}: cannot resume, the training pairs of {config.dataset} changed")
    return checkpoint


def _normalised(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _ema_copy(model: Any, ema: Any) -> Any:
    """A copy of the model holding the EMA weights (the training model is left untouched)."""
    averaged = copy.deepcopy(model)
    ema.copy_to(averaged.parameters())
    return averaged.eval()


class _LossLog:
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


def make_pipeline(model: Any, config: TrainConfig, step: int | None = None,
                  class_values: Mapping[str, Sequence[str]] | None = None) -> Any:
    """The model with the few-step DPM++ sampler on the training noise schedule.

    `class_values`: each class attribute's values in index order (saved with the model, so that
    generation maps attribute values to indices without the training dataset)."""
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.diffusion.schedulers import make_scheduler

    training = make_scheduler("ddpm", config.prediction_type, config.num_train_timesteps)
    scheduler = make_scheduler("dpm++", config=training.config)
    values = [[name, list(class_values[name])] for name in config.class_attributes] if class_values else None
    return MaskToUltrasoundPipeline(unet=model, scheduler=scheduler, sample_size=config.image_size,
                                    training_step=step, class_values=values)


def save_pipeline(model: Any, config: TrainConfig, out: Path, step: int | None = None,
                  class_values: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Save the model as a diffusers pipeline folder, atomically (built next to `out`, then renamed)."""
    from sonosynth.data.format import commit_folder

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    make_pipeline(model, config, step, class_values).save_pretrained(str(tmp))
    commit_folder(tmp, out)
    return out


def sample_batch(model: Any, items: list[dict[str, Any]], config: TrainConfig, seed: int) -> tuple[Any, Any]:
    """Generate images for the label maps of `items` with the few-step sampler: (images, masks or None).

    Images are (B, 1, S, S) in [-1, 1]; masks are the generated ones for a joint model.
    """
    import torch

    pipeline = make_pipeline(model, config)
    pipeline.set_progress_bar_config(disable=True)
    labels = torch.stack([it["label"] for it in items])
    fov = torch.stack([it["fov"] for it in items])
    classes = torch.stack([it["classes"] for it in items]) if config.class_attributes else None
    joint = config.model.kind == "joint"
    output = pipeline(
        labels=None if joint else labels,
        fov=fov,
        class_labels=classes,
        num_inference_steps=config.sample_steps,
        guidance_scale=config.guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        batch_size=len(items),
        output_type="pt",
    )
    return output.images, getattr(output, "masks", None)


def _write_sample_grid(model: Any, items: list[dict[str, Any]], config: TrainConfig, path: Path) -> None:
    """PNG rows of mask | generated | real, written atomically."""
    import torch
    from PIL import Image

    with torch.no_grad():
        images, masks = sample_batch(model, items, config, derive_seed(config.seed, "samples"))
    images = _as_unit_range(images).cpu()
    k = max(1, config.model.num_labels - 1)
    rows = []
    for i, item in enumerate(items):
        label = masks[i] if masks is not None else item["label"]
        real = (item["image"][0] + 1.0) / 2.0
        row = [label.float().cpu() / k, images[i, 0], real]
        rows.append(torch.cat([torch.nn.functional.pad(c, (1, 1, 1, 1), value=0.5) for c in row], dim=1))
    grid = (torch.cat(rows, dim=0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.png")
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)


def _as_unit_range(images: Any) -> Any:
    """Pipeline "pt" images, (B, 1, H, W) in [-1, 1], as floats in [0, 1]."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
