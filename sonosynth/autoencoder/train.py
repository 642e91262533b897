"""Training the ultrasound autoencoder: the same machinery as `sonosynth train`, for images without masks.

The run folder has the layout of `sonosynth.training.run` (config.yaml, checkpoints/, samples/,
loss.csv, model/); model/ is a diffusers `AutoencoderKL` folder holding the EMA weights. Resume is
exact in one process (tested), as for the denoiser: the data order comes from
`StreamBatchSampler` (a function of the position), each item's augmentation and patch from its own
seed, the latent noise from (seed, step), and everything else (both networks, the EMA, both
optimizers, the global RNG states) is checkpointed in safetensors + JSON.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sonosynth.autoencoder.config import AutoencoderConfig
from sonosynth.errors import SonosynthError
from sonosynth.files import build_folder
from sonosynth.seeds import derive_seed
from sonosynth.training import checkpoints as ckpt
from sonosynth.training.loop import (
    Cadence,
    OnStep,
    TrainingHooks,
    TrainResult,
    open_run,
    refuse_existing_run,
    run_loop,
)
from sonosynth.training.run import RunFolder
from sonosynth.training.stream import StreamBatchSampler, random_crop

LOSS_COLUMNS = ("step", "loss", "l1", "frequency", "kl", "adversarial", "discriminator")


class AutoencoderResult(TrainResult):
    """A `TrainResult` whose `losses` are the rows of loss terms (l1, frequency, kl, adversarial, ...), not one
    number per step."""

    @property
    def losses(self) -> list[dict[str, float]]:  # type: ignore[override]
        return self.history


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
            parts.append(LetterboxedPairs(chosen, config.size))
            digest.update((Path(path) / MANIFEST_CSV).read_bytes())
            digest.update(",".join(r.id for r in chosen.records).encode())
        self.images = torch.utils.data.ConcatDataset(parts)
        self.fingerprint = digest.hexdigest()[:16]
        self.config = config
        self.augmentation = Augmentation(config.augment, config.size)

    def __len__(self) -> int:
        return len(self.images)

    def whole(self, index: int) -> torch.Tensor:
        return self.images[index]["image"]

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, seed = key
        item = self.images[index]
        image, fov = self.augmentation(item["image"], item["fov"], seed)
        if self.config.patch_size and self.config.patch_size < self.config.size:
            image = random_crop({"image": image, "fov": fov}, self.config.patch_size,
                                torch.Generator().manual_seed(seed))["image"]
        return image


def train_autoencoder(
    config: AutoencoderConfig,
    run_dir: str | Path,
    resume: bool = False,
    on_step: OnStep | None = None,
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


def _train(config: AutoencoderConfig, run_dir: Path, resume: bool, on_step: OnStep | None,
           progress: bool, device: str, looping: list[bool]) -> AutoencoderResult:
    from diffusers.training_utils import EMAModel
    from monai.losses import PatchAdversarialLoss

    from sonosynth.autoencoder.model import build_autoencoder, build_discriminator, frequency_loss
    started = time.perf_counter()
    images = ImagePatches(config)
    checkpoint = _checkpoint_to_resume(run_dir, config, images.fingerprint) if resume else None
    refuse_existing_run(run_dir, resume)
    accelerator = open_run(run_dir, config, device)

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
    trained = [p for p in autoencoder.parameters() if p.requires_grad]
    optimizers = {
        "autoencoder": torch.optim.AdamW(trained, lr=config.learning_rate),
        "discriminator": torch.optim.AdamW(discriminator.parameters(), lr=config.learning_rate),
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

    def one_step(at: int) -> dict[str, float]:
        x = next(batches).to(accelerator.device)
        generator = torch.Generator(device=accelerator.device).manual_seed(derive_seed(config.seed, "latent", at))
        with accelerator.autocast():
            posterior = autoencoder.encode(x).latent_dist
            reconstruction = autoencoder.decode(posterior.sample(generator=generator)).sample
        terms = {"l1": (reconstruction.float() - x).abs().mean(), "frequency": frequency_loss(reconstruction, x),
                 "kl": posterior.kl().mean()}
        use_gan = config.adversarial_weight > 0 and at >= config.adversarial_start
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
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}

    def write_grid(at: int) -> None:
        _write_grid(ckpt.ema_copy(networks["autoencoder"], ema), grid_items,
                    RunFolder(run_dir).samples / f"step-{at:06d}.png")

    hooks = TrainingHooks(
        one_step, lambda at: _save(run_dir, at, networks, ema, optimizers, config, images.fingerprint), write_grid,
        postfix=("loss", "l1"))
    cadence = Cadence(config.max_steps, config.checkpoint_every, config.sample_every, columns=LOSS_COLUMNS)
    step, history = run_loop(accelerator, run_dir, hooks, cadence, step, checkpoint is not None, looping, on_step,
                             progress, desc="autoencoder")
    averaged = ckpt.ema_copy(networks["autoencoder"], ema)
    model_dir = build_folder(RunFolder(run_dir).model, lambda tmp: averaged.save_pretrained(str(tmp)))
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
    from sonosynth.training.grids import write_grid

    if not images:
        return
    batch = torch.stack(images).to(model.device)
    reconstruction = model.decode(model.encode(batch).latent_dist.mode()).sample.clamp(-1, 1).cpu()
    write_grid([[(a[0] + 1) / 2, (b[0] + 1) / 2] for a, b in zip(batch.cpu(), reconstruction, strict=True)], path)
