"""Fine-tuning a local Stable Diffusion on a dataset: a ControlNet on the label maps and/or LoRA on the UNet.

The pattern of diffusers' `train_controlnet.py` and `train_text_to_image_lora.py`, on sonosynth's
machinery: the same training stream as `sonosynth train` (pairs, order, augmentation, exact resume), the
same accelerate setup (CPU, one GPU, `accelerate launch`/torchrun), safetensors checkpoints of only what is
trained, sample grids, loss.csv and a run folder that `sonosynth generate / edit / evaluate` take.

- ControlNet: `ControlNetModel.from_unet(base UNet)` with K+1 conditioning channels (one-hot labels + field
  of view) at the image's resolution; the base stays frozen unless `lora_rank` also LoRA-tunes it.
- LoRA (`peft`): rank-r adapters on the UNet's attention projections (to_q, to_k, to_v, to_out.0).
- Prompts: the run's template filled from each pair's attributes, dropped to "" with `cond_drop_prob`
  so that sampling can use classifier-free guidance over the text.
- joint: the picture is image | mask side by side (mask as grey levels), so the model draws both.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from sonosynth.errors import SonosynthError
from sonosynth.seeds import derive_seed
from sonosynth.stable_diffusion.config import MUST_MATCH_ON_RESUME, StableDiffusionConfig
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
from sonosynth.training.run import RunFolder
from sonosynth.training.stream import StreamBatchSampler

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # as diffusers' LoRA examples
CONDITIONING_CHANNELS = (16, 32, 96, 256)  # diffusers' ControlNet conditioning encoder (for 8x latents)


class TrainableWeights:
    """The parameters a run trains (its ControlNet, its LoRA adapters), by name: what checkpoints hold."""

    def __init__(self, modules: dict[str, Any]):
        self.modules = {name: module for name, module in modules.items() if module is not None}

    def named_parameters(self) -> Any:
        for prefix, module in self.modules.items():
            for name, parameter in module.named_parameters():
                if parameter.requires_grad:
                    yield f"{prefix}.{name}", parameter

    def parameters(self) -> list[Any]:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> dict[str, Any]:
        return {name: p.detach() for name, p in self.named_parameters()}

    def load_state_dict(self, tensors: dict[str, Any]) -> None:
        import torch

        own = dict(self.named_parameters())
        if set(own) != set(tensors):
            raise SonosynthError(f"checkpoint holds other trained weights ({len(tensors)} tensors, the run trains "
                                 f"{len(own)})")
        with torch.no_grad():
            for name, parameter in own.items():
                parameter.copy_(tensors[name])


def train_stable_diffusion(
    config: StableDiffusionConfig,
    run_dir: str | Path,
    resume: bool = False,
    on_step: OnStep | None = None,
    progress: bool = True,
    device: str = "auto",
) -> TrainResult:
    """Train (or resume) into `run_dir` until `config.max_steps`; same contract as `diffusion.train.train`."""
    return ckpt.train_cleanly(Path(run_dir), lambda looping: _train(config, Path(run_dir), resume, on_step,
                                                                    progress, device, looping),
                              inputs=[config.dataset, config.base])


def _train(config: StableDiffusionConfig, run_dir: Path, resume: bool,
           on_step: OnStep | None, progress: bool, device: str,
           looping: list[bool]) -> TrainResult:
    import torch
    import torch.nn.functional as F

    from sonosynth.data.format import Dataset
    from sonosynth.diffusion.data import TrainingItems, open_training_pairs
    from sonosynth.stable_diffusion.base import base_fingerprint, load_base
    from sonosynth.stable_diffusion.pipeline import control_image, encode_images, predict_noise
    from sonosynth.stable_diffusion.prompts import dataset_organ, prompt_attributes, prompts_for

    started = time.perf_counter()
    if not config.base:
        raise SonosynthError("no Stable Diffusion folder given (base, --base SD_DIR)")
    base_hash = base_fingerprint(config.base)  # a clear error for an incomplete folder, before anything else
    info = Dataset.open(config.dataset).info if config.dataset else None
    attributes = prompt_attributes(config.prompt_template, info.categorical_attributes if info else {})
    data_config = config.data_config(attributes)
    pairs, fingerprint = open_training_pairs(data_config)
    num_labels, organ = pairs.dataset.info.num_labels, dataset_organ(pairs.dataset.info)

    checkpoint = ckpt.checkpoint_to_resume(run_dir, config, fingerprint, MUST_MATCH_ON_RESUME) if resume else None
    refuse_existing_run(run_dir, resume)
    parts = load_base(config.base)
    factor = parts.latent_factor * 2 ** (len(parts.unet.config.block_out_channels) - 1)
    if config.size % factor:
        raise SonosynthError(f"size={config.size} must be a multiple of {factor} for {config.base}")

    accelerator = open_run(run_dir, config, device)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes

    vae, unet = parts.vae, parts.unet
    controlnet, trainable = _trainable_parts(config, parts, num_labels)
    if _checkpointing(config, accelerator):
        for module in trainable.modules.values():
            module.enable_gradient_checkpointing()
    optimizer, lr_scheduler = make_optimization(trainable.parameters(), config)
    step = 0
    if checkpoint is not None:
        state = ckpt.restore_weights(checkpoint, trainable, None)
        step = int(state["step"])
    weight_dtype = _place(parts, trainable, accelerator)
    prepared = accelerator.prepare(*trainable.modules.values(), optimizer)
    models, optimizer = dict(zip(trainable.modules, prepared[:-1], strict=True)), prepared[-1]
    train_unet = models.get("unet", unet)
    train_controlnet = models.get("controlnet")
    if checkpoint is not None:
        ckpt.restore_optimization(checkpoint, state, optimizer, lr_scheduler, accelerator)
        accelerator.print(f"resuming from {checkpoint} (step {step})")

    sampler = StreamBatchSampler(len(pairs), config.batch_size, config.seed, rank, world,
                                 start=step * config.grad_accumulation)
    batches = iter(TrainingItems(pairs, data_config).loader(sampler))
    grid_items = [pairs[i] for i in range(min(config.num_samples, len(pairs)))]
    class_values = {name: list(pairs.class_values[name]) for name in attributes}

    def micro_loss(micro_batch: int) -> Any:
        batch = next(batches)
        generator = torch.Generator(device=device).manual_seed(derive_seed(config.seed, "noise", micro_batch, rank))
        labels, fov = batch["label"].to(device), batch["fov"].to(device)
        picture = _picture(batch["image"].to(device), labels, config.kind, num_labels)
        with torch.no_grad():
            latents = encode_images(vae, picture, sample=generator).float()
            prompts = prompts_for(config.prompt_template, organ, class_values, batch.get("classes"), labels.shape[0])
            text = _encode_prompts(parts, prompts, config.cond_drop_prob, generator)
        noisy, timesteps, target = noised(parts.scheduler, latents, generator, parts.scheduler.config.prediction_type)
        control = None if controlnet is None else control_image(labels, fov, num_labels).to(device)
        with accelerator.autocast():
            prediction = predict_noise(train_unet, train_controlnet, noisy.to(weight_dtype), timesteps, text, control)
        return F.mse_loss(prediction.float(), target.float())

    def one_step(at: int) -> dict[str, float]:
        for module in trainable.modules.values():
            module.train()
        first = at * config.grad_accumulation
        loss = accumulated_step(accelerator, train_controlnet or train_unet, optimizer, lr_scheduler,
                                trainable.parameters(), config.grad_accumulation, config.max_grad_norm,
                                lambda micro: micro_loss(first + micro))
        return {"loss": loss, "lr": lr_scheduler.get_last_lr()[0]}

    def write_checkpoint(at: int) -> None:
        ckpt.save_training_state(accelerator, run_dir, at, trainable, None, optimizer, lr_scheduler, config,
                                 fingerprint)

    def write_grid(at: int) -> None:
        with accelerator.autocast():  # frozen parts may be half precision, trained ones float32
            _write_sample_grid(_pipeline(parts, controlnet, config, num_labels, organ, class_values, None),
                               grid_items, config, RunFolder(run_dir).samples / f"{ckpt.checkpoint_name(at)}.png")

    hooks = TrainingHooks(one_step, write_checkpoint, write_grid, postfix=("loss", "lr"))
    cadence = Cadence(config.max_steps, config.checkpoint_every, config.sample_every)
    step, history = run_loop(accelerator, run_dir, hooks, cadence, step, checkpoint is not None, looping, on_step,
                             progress)
    model_dir = None
    if accelerator.is_main_process:
        pipe = _pipeline(parts, controlnet, config, num_labels, organ, class_values, step)
        model_dir = save_trained_parts(pipe, RunFolder(run_dir).model, config, base_hash)
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, step, history, model_dir, time.perf_counter() - started, controlnet or unet)


def _picture(image: Any, labels: Any, kind: str, num_labels: int) -> Any:
    """What the model draws: the image, or for `joint` image | mask side by side (the mask as grey levels)."""
    import torch

    from sonosynth.stable_diffusion.pipeline import mask_to_gray

    return torch.cat([image, mask_to_gray(labels, num_labels)], dim=-1) if kind == "joint" else image


def _encode_prompts(parts: Any, prompts: list[str], drop_prob: float, generator: Any) -> Any:
    """The text encoder's embeddings of `prompts`, each dropped to "" with `drop_prob` (classifier-free guidance's
    null condition), the drops drawn from `generator`."""
    import torch

    device = parts.text_encoder.device
    dropped = torch.rand(len(prompts), generator=generator, device=device) < drop_prob
    prompts = ["" if drop else p for p, drop in zip(prompts, dropped.tolist(), strict=True)]
    ids = parts.tokenizer(prompts, padding="max_length", max_length=parts.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids.to(device)
    return parts.text_encoder(ids, return_dict=False)[0]


def _trainable_parts(config: StableDiffusionConfig, parts: Any, num_labels: int) -> tuple[Any, TrainableWeights]:
    """The base frozen; the ControlNet (kind controlnet) and/or LoRA adapters (lora_rank) it trains, initialised
    from (seed, "init") without touching the global generator."""
    import torch

    for frozen in (parts.vae, parts.text_encoder, parts.unet):
        frozen.requires_grad_(False)
    controlnet = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "init"))
        if config.kind == "controlnet":
            controlnet = _controlnet_from(parts.unet, num_labels + 1, parts.latent_factor)
        if config.lora_rank:
            from peft import LoraConfig

            parts.unet.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
                                              init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    return controlnet, TrainableWeights({"controlnet": controlnet, "unet": parts.unet if config.lora_rank else None})


def _place(parts: Any, trainable: TrainableWeights, accelerator: Any) -> Any:
    """Everything on the accelerator's device; returns the frozen parts' dtype. Frozen parts take the
    mixed-precision dtype on a GPU (as diffusers' examples); trained ones stay float32. On the CPU they stay
    float32 too: CPU autocast does not run half-precision group norms."""
    import torch

    device, weight_dtype = accelerator.device, torch.float32
    if device.type == "cuda":
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for frozen in (parts.vae, parts.text_encoder, parts.unet):
        frozen.to(device) if weight_dtype == torch.float32 else frozen.to(device, weight_dtype)
    for parameter in trainable.parameters():
        parameter.data = parameter.data.float()
    if "controlnet" in trainable.modules:
        trainable.modules["controlnet"].to(device)
    return weight_dtype


def _controlnet_from(unet: Any, channels: int, latent_factor: int) -> Any:
    """A ControlNet copied from the base UNet, its conditioning encoder bringing full-resolution label maps
    down to the latent grid (diffusers' widths, one level per factor of two)."""
    from diffusers import ControlNetModel

    levels = int(math.log2(latent_factor)) + 1
    widths = CONDITIONING_CHANNELS[:levels] if levels <= len(CONDITIONING_CHANNELS) else None
    if widths is None or 2 ** (levels - 1) != latent_factor:
        raise SonosynthError(f"the base VAE downsamples by {latent_factor}; ControlNet needs a power of two <= 8")
    return ControlNetModel.from_unet(unet, conditioning_channels=channels, conditioning_embedding_out_channels=widths)


def _checkpointing(config: StableDiffusionConfig, accelerator: Any) -> bool:
    if config.gradient_checkpointing == "auto":
        return accelerator.device.type == "cuda"
    return config.gradient_checkpointing == "yes"


def _pipeline(parts: Any, controlnet: Any, config: StableDiffusionConfig, num_labels: int, organ: str,
              class_values: dict[str, list[str]], step: int | None) -> Any:
    from sonosynth.diffusion.schedulers import make_scheduler
    from sonosynth.stable_diffusion.pipeline import PromptedMaskPipeline

    pipe = PromptedMaskPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=make_scheduler("dpm++", config=parts.scheduler.config), controlnet=controlnet, kind=config.kind,
        num_labels=num_labels, prompt_template=config.prompt_template, organ=organ, sample_size=config.size,
        training_step=step, class_values=[[name, values] for name, values in class_values.items()],
        conditioning_scale=config.conditioning_scale,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_trained_parts(pipe: Any, out: Path, config: StableDiffusionConfig, base_hash: str) -> Path:
    """RUN/model/: base.json, the ControlNet (diffusers folder) and the LoRA weights (diffusers' LoRA file),
    atomically; the base's own weights are not copied."""
    from sonosynth.files import build_folder, write_json_atomic
    from sonosynth.stable_diffusion.pipeline import BASE_JSON, CONTROLNET_DIR, LORA_FILE

    def write(tmp: Path) -> None:
        if pipe.controlnet is not None:
            pipe.controlnet.save_pretrained(tmp / CONTROLNET_DIR, safe_serialization=True)
        if config.lora_rank:
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
            type(pipe).save_lora_weights(str(tmp), unet_lora_layers=layers, weight_name=LORA_FILE,
                                         safe_serialization=True)
        write_json_atomic(tmp / BASE_JSON, {
            "base": str(Path(config.base).resolve()), "base_hash": base_hash, "kind": config.kind,
            "num_labels": pipe.num_labels, "prompt_template": config.prompt_template, "organ": pipe.config.organ,
            "sample_size": config.size, "training_step": pipe.config.training_step,
            "guidance_scale": config.guidance_scale,
            "class_values": pipe.config.class_values, "conditioning_scale": config.conditioning_scale,
            "lora_rank": config.lora_rank,
        })

    return build_folder(out, write)


def _write_sample_grid(pipe: Any, items: list[dict[str, Any]], config: StableDiffusionConfig, path: Path) -> None:
    """Rows of mask | generated | real, as `sonosynth train` writes them."""
    import torch

    from sonosynth.training.grids import write_grid

    labels = torch.stack([it["label"] for it in items])
    fov = torch.stack([it["fov"] for it in items])
    classes = torch.stack([it["classes"] for it in items]) if pipe.class_attributes else None
    device = pipe.unet.device
    output = pipe(labels=labels.to(device) if pipe.conditioned_on_masks else None, fov=fov.to(device),
                  class_labels=None if classes is None else classes.to(device),
                  num_inference_steps=config.sample_steps, guidance_scale=config.guidance_scale,
                  generator=[torch.Generator().manual_seed(derive_seed(config.seed, "samples", i))
                             for i in range(len(items))], output_type="pt")
    k = max(1, pipe.num_labels - 1)
    rows = []
    for i, item in enumerate(items):
        mask = output.masks[i] if output.masks is not None else item["label"]
        rows.append([mask.float().cpu() / k, (output.images[i, 0].float().cpu() + 1) / 2,
                     (item["image"][0] + 1.0) / 2.0])
    write_grid(rows, path)
