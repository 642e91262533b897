"""`PromptedMaskPipeline`: Stable Diffusion (+ ControlNet, + LoRA) driven by sonosynth's one sampling engine.

It is a `MaskToUltrasoundPipeline` whose conditioning is text (a prompt built from the pair's attributes by
the run's template, or given) and, for a ControlNet run, the label map: `prepare_guidance`,
`guided_prediction`, `encode` and `decode` are overridden, the loop (`denoise`), img2img, two-stage sampling
and RePaint editing are the engine's own. So `sonosynth generate / edit / evaluate` take such a run like any
other, and it loads with one call:

```
pipe = MaskToUltrasoundPipeline.from_pretrained("runs/busi-controlnet")   # or PromptedMaskPipeline
out = pipe(labels, fov=fov, prompt="ultrasound image of the breast, malignant")
sd = pipe.to_diffusers()   # diffusers' StableDiffusionControlNetPipeline on the same components
```

Grayscale goes through the RGB VAE as three equal channels and comes back as their mean. Classifier-free
guidance is over the text, as in diffusers' ControlNet pipeline: the unconditional half keeps the mask.
A `joint` run generates image | mask side by side (width 2S) and reads the mask back by its grey level;
a `lora` run has no mask and returns an all-background one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.loaders import StableDiffusionLoraLoaderMixin

from sonosynth.diffusion.pipeline import Guidance, MaskToUltrasoundPipeline
from sonosynth.errors import SonosynthError
from sonosynth.files import read_json_object
from sonosynth.stable_diffusion.prompts import prompts_for
from sonosynth.training.run import BASE_JSON

CONTROLNET_DIR = "controlnet"
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LoRA file name (save_lora_weights)


@dataclass
class PromptGuidance(Guidance):
    """Guidance plus the prompt embeddings (conditional, then unconditional when guided)."""

    text: torch.Tensor | None = None


def control_image(labels: torch.Tensor, fov: torch.Tensor | None, num_labels: int) -> torch.Tensor:
    """ControlNet's conditioning: one-hot labels + field of view, (B, K+1, S, S) in [0, 1], at full resolution."""
    one_hot = torch.nn.functional.one_hot(labels.long().clamp(0, num_labels - 1), num_labels)
    one_hot = one_hot.permute(0, 3, 1, 2).float()
    fov = torch.ones_like(one_hot[:, :1]) if fov is None else fov.float()
    return torch.cat([one_hot, fov], dim=1)


def mask_to_gray(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """A label map as a grey picture (B, 1, S, S) in [-1, 1]: label k at k / (K-1) of the range."""
    return labels.float()[:, None] / max(1, num_labels - 1) * 2.0 - 1.0


def gray_to_mask(gray: torch.Tensor, num_labels: int) -> torch.Tensor:
    """The nearest label of each grey level (B, 1, S, S) in [-1, 1]: (B, S, S) long."""
    levels = ((gray[:, 0].float() + 1.0) / 2.0 * max(1, num_labels - 1)).round()
    return levels.clamp(0, num_labels - 1).long()


class PromptedMaskPipeline(MaskToUltrasoundPipeline, StableDiffusionLoraLoaderMixin):
    """A Stable Diffusion run of sonosynth (`sonosynth train --base SD_DIR --kind controlnet|lora|joint`)."""

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _optional_components = ["controlnet"]
    prompted = True

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Any,
        controlnet: Any = None,
        kind: str = "controlnet",
        num_labels: int = 2,
        prompt_template: str = "",
        organ: str = "",
        sample_size: int | None = None,
        training_step: int | None = None,
        class_values: list[list[Any]] | None = None,
        conditioning_scale: float = 1.0,
    ):
        DiffusionPipeline.__init__(self)
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, controlnet=controlnet)
        self.register_to_config(kind=kind, num_labels=num_labels, prompt_template=prompt_template, organ=organ,
                                sample_size=sample_size, training_step=training_step, class_values=class_values)
        self.conditioning_scale = float(conditioning_scale)

    # -- loading: the base folder + what the run trained ------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, base: str | Path | None = None,
                        **kwargs: Any) -> PromptedMaskPipeline:
        """Load a run (or its model/ folder) on the base it was trained on; `base` points at a moved copy
        of that base (its configs must hash the same)."""
        from diffusers import ControlNetModel

        from sonosynth.diffusion.schedulers import make_scheduler
        from sonosynth.stable_diffusion.base import base_fingerprint, load_base
        from sonosynth.training.run import model_folder

        folder = model_folder(pretrained_model_name_or_path)
        saved = read_base_json(folder)
        base_path = Path(base or saved["base"])
        if not base_path.is_dir():
            raise SonosynthError(f"{folder}: trained on the Stable Diffusion folder {saved['base']}, which is not "
                                 "there any more; load with base=THAT_FOLDER")
        if base_fingerprint(base_path) != saved["base_hash"]:
            raise SonosynthError(f"{folder}: trained on a different Stable Diffusion base than {base_path} "
                                 f"(config hash {saved['base_hash']}, this one {base_fingerprint(base_path)})")
        parts = load_base(base_path)
        controlnet = None
        if (folder / CONTROLNET_DIR).is_dir():
            controlnet = ControlNetModel.from_pretrained(folder / CONTROLNET_DIR, local_files_only=True,
                                                         use_safetensors=True)
        pipe = cls(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
                   scheduler=make_scheduler("dpm++", config=parts.scheduler.config), controlnet=controlnet,
                   kind=saved["kind"], num_labels=int(saved["num_labels"]), prompt_template=saved["prompt_template"],
                   organ=saved.get("organ", ""), sample_size=saved.get("sample_size"),
                   training_step=saved.get("training_step"), class_values=saved.get("class_values") or [],
                   conditioning_scale=float(saved.get("conditioning_scale", 1.0)))
        pipe.default_guidance_scale = float(saved.get("guidance_scale", 4.0))  # runs before it was saved: the default
        if (folder / LORA_FILE).is_file():
            pipe.load_lora_weights(str(folder), weight_name=LORA_FILE)
        pipe.register_to_config(_name_or_path=str(folder))
        dtype = kwargs.get("torch_dtype")
        return pipe.to(dtype=dtype) if dtype is not None else pipe

    def to_diffusers(self) -> Any:
        """diffusers' own pipeline on these components (StableDiffusionControlNetPipeline, or
        StableDiffusionPipeline for a lora/joint run): text prompts and RGB conditioning images, as its docs."""
        from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

        parts = {"vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer, "unet": self.unet,
                 "scheduler": self.scheduler, "safety_checker": None, "feature_extractor": None,
                 "requires_safety_checker": False}
        if self.controlnet is not None:
            return StableDiffusionControlNetPipeline(controlnet=self.controlnet, **parts)
        return StableDiffusionPipeline(**parts)

    # -- what the engine asks of a pipeline ---------------------------------------------------------------
    @property
    def kind(self) -> str:
        return str(self.config.kind)

    @property
    def conditioned_on_masks(self) -> bool:
        return self.kind == "controlnet"

    @property
    def num_labels(self) -> int:
        return int(self.config.num_labels)

    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def downsampling_factor(self) -> int:
        return self.latent_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def latent_shape(self, batch: int, side: int) -> tuple[int, ...]:
        cells = side // self.latent_factor
        return (batch, int(self.unet.config.in_channels), cells, 2 * cells if self.kind == "joint" else cells)

    def image_shape(self, batch: int, side: int) -> tuple[int, ...]:
        return (batch, 1, side, side)

    @property
    def class_attributes(self) -> dict[str, list[str]]:
        return {str(name): [str(v) for v in values] for name, values in self.config.class_values or []}

    def prompts(self, class_labels: torch.Tensor | None, batch: int) -> list[str]:
        """The template's prompt for each row of attribute indices (-1: unknown, left out of the prompt)."""
        return prompts_for(self.config.prompt_template, self.config.organ, self.class_attributes, class_labels, batch)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text embeddings (B, tokens, width) of `prompts`, padded to the tokenizer's length."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device), return_dict=False)[0]

    def prepare_guidance(
        self,
        labels: torch.Tensor | None,
        fov: torch.Tensor | None = None,
        coords: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        guidance_scale: float = 4.0,
        batch: int | None = None,
        size: int | None = None,
        prompt: str | list[str] | None = None,
    ) -> PromptGuidance:
        """Text embeddings (the given prompt, or the template's from `class_labels`) and the ControlNet image."""
        if coords is not None:
            raise ValueError("a Stable Diffusion run takes no coordinate channels")
        batch = labels.shape[0] if labels is not None else fov.shape[0] if fov is not None else batch
        if batch is None:
            raise ValueError("pass labels, fov or batch")
        prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt) if prompt is not None else \
            self.prompts(class_labels, batch)
        if len(prompts) != batch:
            raise ValueError(f"got {len(prompts)} prompts for {batch} images")
        text = self.encode_prompt(prompts)
        condition = None
        if self.controlnet is not None:
            if labels is None:
                raise ValueError("a ControlNet run generates from label maps: pass labels (B, S, S)")
            condition = control_image(labels, fov, self.num_labels).to(self.unet.device, self.unet.dtype)
        if guidance_scale == 1.0:
            return PromptGuidance(condition, None, 1.0, text=text)
        return PromptGuidance(
            condition=None if condition is None else torch.cat([condition, condition]),
            class_labels=None,
            scale=guidance_scale,
            text=torch.cat([text, self.encode_prompt([""] * batch)]),
        )

    def model_prediction(self, x: torch.Tensor, t: torch.Tensor | int, guidance: Guidance) -> torch.Tensor:
        return predict_noise(self.unet, self.controlnet, x, t, guidance.text, guidance.condition,
                             self.conditioning_scale)

    @torch.no_grad()
    def encode(self, image: torch.Tensor | None) -> torch.Tensor | None:
        if image is None:
            return None
        if self.kind == "joint":
            raise ValueError("a joint run starts from noise only (its sample is image | mask)")
        return encode_images(self.vae, image)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, fov: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        picture = self.vae.decode(x.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        gray = picture.float().mean(dim=1, keepdim=True).clamp(-1.0, 1.0)
        mask = None
        if self.kind == "joint":
            side = gray.shape[-1] // 2
            gray, mask = gray[..., :side], gray_to_mask(gray[..., side:], self.num_labels)
        elif self.kind == "lora":
            mask = torch.zeros(gray.shape[0], *gray.shape[-2:], dtype=torch.long, device=gray.device)
        if fov is not None:
            inside = fov.to(gray.device) > 0.5
            gray = torch.where(inside, gray, torch.full_like(gray, -1.0))
            if mask is not None:
                mask = torch.where(inside[:, 0], mask, torch.zeros_like(mask))
        return gray, mask


def predict_noise(unet: Any, controlnet: Any, x: torch.Tensor, t: torch.Tensor | int, text: torch.Tensor,
                  condition: torch.Tensor | None, conditioning_scale: float = 1.0) -> torch.Tensor:
    """The UNet's prediction, with the ControlNet's residuals added when there is one (training and sampling)."""
    down = mid = None
    if controlnet is not None:
        down, mid = controlnet(x, t, encoder_hidden_states=text, controlnet_cond=condition,
                               conditioning_scale=conditioning_scale, return_dict=False)
    return unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                mid_block_additional_residual=mid, return_dict=False)[0]


def encode_images(vae: Any, gray: torch.Tensor, sample: torch.Generator | None = None) -> torch.Tensor:
    """Grey images (B, 1, H, W) in [-1, 1] as scaled latents: three equal channels into the RGB VAE; the
    posterior's mode, or a draw from it with `sample` (training, as diffusers' examples)."""
    rgb = gray.to(vae.device, vae.dtype).expand(-1, 3, -1, -1)
    posterior = vae.encode(rgb).latent_dist
    latent = posterior.sample(sample) if sample is not None else posterior.mode()
    return latent * vae.config.scaling_factor


def read_base_json(folder: Path) -> dict[str, Any]:
    path = Path(folder) / BASE_JSON
    saved = read_json_object(path, "the run's base record")
    missing = [k for k in ("base", "base_hash", "kind", "num_labels", "prompt_template") if k not in saved]
    if missing:
        raise SonosynthError(f"{path}: missing {', '.join(missing)}")
    return saved
