"""`StableDiffusionConfig`: a run that fine-tunes a local Stable Diffusion (RUN/config.yaml, with `base:`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from sonosynth.augment import AugmentConfig
from sonosynth.diffusion.config import LR_SCHEDULES, TrainConfig
from sonosynth.errors import SonosynthError
from sonosynth.settings import MIXED_PRECISION, Config, at_least_one
from sonosynth.stable_diffusion.prompts import DEFAULT_TEMPLATE, template_fields

# controlnet: a ControlNet on the label map (base frozen, or LoRA-tuned too with lora_rank);
# lora: LoRA on the base UNet, prompts only (datasets without masks);
# joint: LoRA on image | mask side by side, the mask read back by thresholding.
KINDS = ("controlnet", "lora", "joint")

MUST_MATCH_ON_RESUME = ("base", "kind", "size", "lora_rank", "lora_alpha", "batch_size", "grad_accumulation",
                        "prompt_template", "split", "seed", "lr_schedule")


@dataclass
class StableDiffusionConfig(Config):
    """Everything that determines a Stable Diffusion fine-tuning run; saved as RUN/config.yaml.

    Defaults follow diffusers' ControlNet and LoRA training examples, at SD 1.5's 512 px.
    """

    what: ClassVar[str] = "Stable Diffusion training config"
    renamed: ClassVar[dict[str, str]] = {"image_size": "size", "lr": "learning_rate"}

    dataset: str = ""
    base: str = ""  # a diffusers-format Stable Diffusion folder
    kind: str = "controlnet"
    size: int = 512
    lora_rank: int | None = None  # None: no LoRA (controlnet only; lora and joint default to 4)
    lora_alpha: float | None = None  # None: equal to the rank
    prompt_template: str = DEFAULT_TEMPLATE
    batch_size: int = 4
    grad_accumulation: int = 1
    learning_rate: float | None = None  # None: 1e-5 for a ControlNet, 1e-4 for LoRA alone
    weight_decay: float = 0.01
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    max_steps: int = 2000
    max_grad_norm: float = 1.0
    cond_drop_prob: float = 0.1  # the prompt is replaced by "" this often: classifier-free guidance over text
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500
    num_samples: int = 4
    sample_steps: int = 25
    guidance_scale: float = 4.0
    conditioning_scale: float = 1.0
    split: str = "auto"
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig.preset("gentle"))
    seed: int = 0
    mixed_precision: str = "auto"
    gradient_checkpointing: str = "auto"  # auto: on a GPU; yes; no

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_dict(self.augment)
        if self.kind in ("lora", "joint") and self.lora_rank is None:
            self.lora_rank = 4
        if self.learning_rate is None:
            self.learning_rate = 1e-5 if self.kind == "controlnet" else 1e-4
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {list(KINDS)}")
        if self.lora_rank is not None and self.lora_rank < 1:
            problems.append("lora_rank must be at least 1")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {list(LR_SCHEDULES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision must be one of {list(MIXED_PRECISION)}")
        if self.gradient_checkpointing not in ("auto", "yes", "no"):
            problems.append("gradient_checkpointing must be auto, yes or no")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            problems.append("cond_drop_prob must be in [0, 1)")
        problems += at_least_one(self, ("size", "batch_size", "grad_accumulation", "max_steps",
                                        "checkpoint_every", "sample_every"))
        if problems:
            raise SonosynthError("invalid Stable Diffusion training config: " + "; ".join(problems))
        template_fields(self.prompt_template)  # a clear error for a broken template

    def data_config(self, class_attributes: list[str]) -> TrainConfig:
        """The training-stream settings of `sonosynth train` (pairs, order, augmentation) for this run."""
        return TrainConfig(dataset=self.dataset, size=self.size, batch_size=self.batch_size,
                           class_attributes=class_attributes, split=self.split, augment=self.augment,
                           seed=self.seed)
