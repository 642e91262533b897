"""Training the ultrasound autoencoder: the same machinery as `sonosynth train`, for images without masks.

The run folder has the layout of `sonosynth.diffusion.run` (config.yaml, checkpoints/, samples/,
loss.csv, model/); model/ is a diffusers `AutoencoderKL` folder holding the EMA weights. Resume is
exact in one process (tested), as for the denoiser: the data order comes from
`StreamBatchSampler` (a function of the position), each item's augmentation and patch from its own
seed, the latent noise from (seed, step), and everything else (both networks, the EMA, both
optimizers, the global RNG states) is checkpointed in safetensors + JSON.
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sonosynth.autoencoder.config import AutoencoderConfig
from sonosynth.diffusion import checkpoints as ckpt
from sonosynth.diffusion.run import RunFolder
from sonosynth.errors import SonosynthError
from sonosynth.files import build_folder
from sonosynth.seeds import derive_seed

LOSS_COLUMNS = ("step", "loss", "l1", "frequency", "kl", "adversarial", "discriminator")


@dataclass
class AutoencoderResult:
    run_dir: Path
    step: int
    losses: list[dict[str, float]]
    model_dir: Path
    seconds: float


class ImagePatches:
    """The images of every dataset, letterboxed, augmented and cut to patches; indexed by (index, seed)."""

    def __init__(self, config: AutoencoderConfig):
        from sonosynth.augment import Augmentation
        from sonosynth.data.format import MANIFEST_CSV, Dataset
        from sonosynth.data.torch_dataset import LetterboxedPairs
        from sonosynth.data.validate import require_valid

        if not config.datasets:
            raise SonosynthError("no dataset given")
        parts, digest = [], hashlib.sha256()
        for path in config.datasets:
            chosen = Dataset.open(path).select(config.split, what="images to train on", trains=True)
            require_valid(chosen, "images to train on")  # before any output exists
            parts.append(LetterboxedPairs(chosen, config.image_size))
            digest.update((Path(path) / MANIFEST_CSV).read_bytes())
            digest.update(",".join(r.id for r in chosen.records).encode())
        self.images = torch.utils.data.ConcatDataset(parts)
        self.fingerprint = digest.hexdigest()[:16]
        self.config = config
        self.augmentation = Augmentation(config.augment, config.image_size)

    def __len__(self) -> int:
        return len(self.images)

    def whole(self, index: int) -> torch.Tensor:
        return self.images[index]["image"]

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        from sonosynth.diffusion.data import random_crop

        index, seed = key
        item = self.images[index]
        image, fov = self.augmentation(item["image"], item["fov"], seed)
        if self.config.patch_size and self.config.patch_size < self.config.image_size:
            image = random_crop({"image": image, "fov": fov}, self.config.patch_size,
                                torch.Generator().manual_seed(seed))["image"]
        return image


def train_autoencoder(
    config: AutoencoderConfig,
    run_dir: str | Path,
    resume: bool = False,
    on_step: Callable[[int, float], bool | None] | None = None,
    progress: bool = True,
    device: str = "auto",
) -> AutoencoderResult:
    """Train (or resume) an autoencoder into `run_dir`; `on_step(step, loss)` as in `sonosynth.diffusion.train`.

    A failure before the first checkpoint leaves nothing behind; after one, the run is kept for --resume."""
    return ckpt.train_cleanly(Path(run_dir), lambda looping: _train(config, Path(run_dir), resume, on_step,
                                                                    progress, device, looping),
                              inputs=[*config.datasets, config.init])


def train_patches_then_whole(config: AutoencoderConfig, out: str | Path, decoder_steps: int, progress: bool = True,
                             device: str = "auto") -> Path:
    """The recipe docs/training.md recommends: `config` (on patches) into OUT-patches, then its decoder on whole
    images for `decoder_steps` steps at batch 2 into OUT, because GroupNorm's statistics differ between a patch
    and a whole image (measured on HC18 at 256 px: patches alone reconstruct whole images 23 % too bright).
    Each part is skipped when finished and resumed when interrupted; returns OUT."""
    out = Path(out)
    patches = out.with_name(out.name + "-patches")
    for folder, part in ((patches, config), (out, None)):
        if (RunFolder(folder).model / "config.json").is_file():  # model/ is written last
            continue
        if part is None:
            part = replace(config, init=str(patches), decoder_only=True, patch_size=None, batch_size=2,
                           max_steps=decoder_steps, adversarial_start=decoder_steps // 6,
                           checkpoint_every=max(1, decoder_steps // 3), sample_every=decoder_steps)
        train_autoencoder(part, folder, resume=RunFolder(folder).has_checkpoints, progress=progress, device=device)
    return out


def _train(config: AutoencoderConfig, run_dir: Path, resume: bool, on_step: Callable[[int, float], bool | None] | None,
           progress: bool, device: str, looping: list[bool]) -> AutoencoderResult:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from monai.losses import PatchAdversarialLoss

    from sonosynth.autoencoder.model import build_autoencoder, build_discriminator, frequency_loss
    from sonosynth.devices import resolve_device
    from sonosynth.diffusion.data import StreamBatchSampler
    from sonosynth.diffusion.train import mixed_precision_for
    from sonosynth.progress import progress_bar

    started = time.perf_counter()
    images = ImagePatches(config)
    folder = RunFolder(run_dir)
    checkpoint = _checkpoint_to_resume(run_dir, config, images.fingerprint) if resume else None
    if not resume and (ckpt.list_checkpoints(run_dir) or folder.model.exists()):
        raise SonosynthError(f"{run_dir}: already holds a training run (use --resume, or another --out)")
    resolve_device(device)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision_for(config.mixed_precision))
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(folder.config_yaml)

    with torch.random.fork_rng(devices=[]):  # weight init draws from the global generator; leave it as it was
        torch.manual_seed(derive_seed(config.seed, "init"))
        autoencoder, discriminator = build_autoencoder(config), build_discriminator(config)
    if config.init and checkpoint is None:  # fine-tuning: the earlier run's (EMA) weights; a fresh discriminator
        init = Path(config.init)
        folder_of_weights = init / "model" if (init / "model").is_dir() else init
        ckpt.load_init_weights(autoencoder, folder_of_weights / "diffusion_pytorch_model.safetensors", config.init)
    if config.decoder_only:  # the latent space stays: no gradient reaches the encoder
        for part in (autoencoder.encoder, autoencoder.quant_conv):
            part.requires_grad_(False)
    ema = EMAModel(autoencoder.parameters(), decay=config.ema_decay)
    optimizers = {
        "autoencoder": torch.optim.AdamW([p for p in autoencoder.parameters() if p.requires_grad], lr=config.lr),
        "discriminator": torch.optim.AdamW(discriminator.parameters(), lr=config.lr),
    }
    step = 0
    if checkpoint is not None:
        step = _restore(checkpoint, autoencoder, discriminator, ema, optimizers)
        accelerator.print(f"resuming from {checkpoint} (step {step})")
    autoencoder, discriminator, optimizers["autoencoder"], optimizers["discriminator"] = accelerator.prepare(
        autoencoder, discriminator, optimizers["autoencoder"], optimizers["discriminator"])
    ema.to(accelerator.device)
    networks = {"autoencoder": accelerator.unwrap_model(autoencoder),
                "discriminator": accelerator.unwrap_model(discriminator)}

    sampler = StreamBatchSampler(len(images), config.batch_size, config.seed, start=step)
    batches = iter(torch.utils.data.DataLoader(images, batch_sampler=sampler))
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    grid_items = [images.whole(i) for i in range(min(config.num_samples, len(images)))]
    history: list[dict[str, float]] = []
    _reset_loss_log(folder.loss_csv, step)
    bar = progress_bar(total=config.max_steps, initial=step, desc="autoencoder", unit="step",
                       disable=not progress)
    last_checkpoint = step if checkpoint is not None else -1
    looping.append(True)
    while step < config.max_steps:
        x = next(batches).to(accelerator.device)
        generator = torch.Generator(device=accelerator.device).manual_seed(derive_seed(config.seed, "latent", step))
        with accelerator.autocast():
            posterior = autoencoder.encode(x).latent_dist
            reconstruction = autoencoder.decode(posterior.sample(generator=generator)).sample
        terms = {"l1": (reconstruction.float() - x).abs().mean(), "frequency": frequency_loss(reconstruction, x),
                 "kl": posterior.kl().mean()}
        use_gan = config.adversarial_weight > 0 and step >= config.adversarial_start
        if use_gan:
            terms["adversarial"] = adversarial(discriminator(reconstruction.float())[-1], target_is_real=True,
                                               for_discriminator=False)
        loss = (terms["l1"] + config.frequency_weight * terms["frequency"] + config.kl_weight * terms["kl"]
                + config.adversarial_weight * terms.get("adversarial", torch.zeros(())))
        optimizers["autoencoder"].zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizers["autoencoder"].step()
        if use_gan:
            fake = discriminator(reconstruction.detach().float())[-1]
            real = discriminator(x)[-1]
            terms["discriminator"] = 0.5 * (adversarial(fake, target_is_real=False, for_discriminator=True)
                                            + adversarial(real, target_is_real=True, for_discriminator=True))
            optimizers["discriminator"].zero_grad(set_to_none=True)
            accelerator.backward(terms["discriminator"])
            optimizers["discriminator"].step()
        ema.step(networks["autoencoder"].parameters())
        step += 1

        row = {"step": step, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
        if not math.isfinite(row["loss"]):
            raise SonosynthError(f"{run_dir}: the loss became {row['loss']} at step {step}; lower the learning rate")
        history.append(row)
        _log_loss(folder.loss_csv, row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", l1=f"{row['l1']:.4f}")
        if step % config.checkpoint_every == 0:
            _save(run_dir, step, networks, ema, optimizers, config, images.fingerprint)
            last_checkpoint = step
        if step % config.sample_every == 0:
            averaged = ckpt.ema_copy(networks["autoencoder"], ema)
            _write_grid(averaged, grid_items, folder.samples / f"step-{step:06d}.png")
        if on_step is not None and on_step(step, row["loss"]):
            break
    bar.close()
    if last_checkpoint != step:
        _save(run_dir, step, networks, ema, optimizers, config, images.fingerprint)
    averaged = ckpt.ema_copy(networks["autoencoder"], ema)
    _write_grid(averaged, grid_items, folder.samples / f"step-{step:06d}.png")
    model_dir = build_folder(folder.model, lambda tmp: averaged.save_pretrained(str(tmp)))
    return AutoencoderResult(run_dir, step, history, model_dir, time.perf_counter() - started)


# ---- checkpoints -------------------------------------------------------------------------------------


def _checkpoint_to_resume(run_dir: Path, config: AutoencoderConfig, fingerprint: str) -> Path | None:
    checkpoint = ckpt.latest_checkpoint(run_dir)
    if checkpoint is None:
        return None
    state = ckpt.read_state(checkpoint)
    saved = AutoencoderConfig.from_dict(state["config"], origin=str(checkpoint)).resume_key()
    wanted = config.resume_key()
    differing = sorted(k for k in wanted if saved.get(k) != wanted[k])
    if differing:
        raise SonosynthError(f"{checkpoint}: cannot resume, the config changed ({', '.join(differing)})")
    if state.get("dataset_fingerprint") != fingerprint:
        raise SonosynthError(f"{checkpoint}: cannot resume, the training images changed")
    return checkpoint


def _save(run_dir: Path, step: int, networks: dict[str, Any], ema: Any, optimizers: dict[str, Any],
          config: AutoencoderConfig, fingerprint: str) -> None:
    tmp = ckpt.begin_checkpoint(run_dir, step)
    rng_tensors, rng_meta = ckpt.capture_rng_state()
    ckpt.save_tensors(tmp / "rng-rank0.safetensors", rng_tensors)
    optimizer_meta = {}
    for name, network in networks.items():
        ckpt.save_tensors(tmp / f"{name}.safetensors", network.state_dict())
        tensors, optimizer_meta[name] = ckpt.flatten_optimizer_state(optimizers[name].state_dict())
        ckpt.save_tensors(tmp / f"optimizer-{name}.safetensors", tensors)
    names = [n for n, _ in networks["autoencoder"].named_parameters()]
    ckpt.save_tensors(tmp / "ema.safetensors", dict(zip(names, ema.shadow_params, strict=True)))
    state = {
        "step": step, "dataset_fingerprint": fingerprint, "config": config.to_dict(), "optimizers": optimizer_meta,
        "ema": {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}, "rng": rng_meta,
    }
    ckpt.finish_checkpoint(tmp, state, config.keep_checkpoints)


def _restore(checkpoint: Path, autoencoder: Any, discriminator: Any, ema: Any, optimizers: dict[str, Any]) -> int:
    state = ckpt.read_state(checkpoint)
    networks = {"autoencoder": autoencoder, "discriminator": discriminator}
    for name, network in networks.items():
        network.load_state_dict(ckpt.load_tensors(checkpoint / f"{name}.safetensors"))
        optimizers[name].load_state_dict(ckpt.unflatten_optimizer_state(
            ckpt.load_tensors(checkpoint / f"optimizer-{name}.safetensors"), state["optimizers"][name]))
    shadow = ckpt.load_tensors(checkpoint / "ema.safetensors")
    names = [n for n, _ in autoencoder.named_parameters()]
    ema.load_state_dict({**state["ema"], "shadow_params": [shadow[n] for n in names]})
    ckpt.restore_rng_state(ckpt.load_tensors(checkpoint / "rng-rank0.safetensors"), state["rng"])
    return int(state["step"])


# ---- outputs -------------------------------------------------------------------------------------------


@torch.no_grad()
def _write_grid(model: Any, images: list[torch.Tensor], path: Path) -> None:
    """PNG rows of input | reconstruction (the posterior's mode), whole images."""
    from sonosynth.diffusion.samples import write_grid

    if not images:
        return
    batch = torch.stack(images).to(model.device)
    reconstruction = model.decode(model.encode(batch).latent_dist.mode()).sample.clamp(-1, 1).cpu()
    write_grid([[(a[0] + 1) / 2, (b[0] + 1) / 2] for a, b in zip(batch.cpu(), reconstruction, strict=True)], path)


def _reset_loss_log(path: Path, start: int) -> None:
    """Keep the rows up to `start` (a run killed after its checkpoint wrote a few more)."""
    rows = []
    if path.is_file():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOSS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _log_loss(path: Path, row: dict[str, float]) -> None:
    with open(path, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=LOSS_COLUMNS).writerow(
            {k: (int(v) if k == "step" else f"{v:.6g}") for k, v in row.items()})
