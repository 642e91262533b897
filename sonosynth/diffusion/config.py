"""`TrainConfig`: everything that determines a diffusion training run (RUN/config.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from sonosynth.augment import AugmentConfig
from sonosynth.errors import SonosynthError
from sonosynth.models.configs import SIZE_PRESETS, ModelConfig
from sonosynth.settings import MIXED_PRECISION, Config, at_least_one, patch_problems

PREDICTION_TYPES = ("v_prediction", "epsilon", "flow")  # flow: rectified flow (training/denoising.py)
LR_SCHEDULES = ("cosine", "constant")

# Changing these makes a checkpoint unloadable or changes what the next batches are.
MUST_MATCH_ON_RESUME = (
    "model",
    "autoencoder",
    "init",
    "size",
    "patch_size",
    "batch_size",
    "grad_accumulation",
    "prediction_type",
    "num_train_timesteps",
    "class_attributes",
    "split",
    "seed",
    "lr_schedule",
    "latent_views",
    "unannotated",
    "unannotated_fraction",
)


@dataclass
class TrainConfig(Config):
    """Everything that determines a training run; saved as RUN/config.yaml.

    Defaults suit a CPU run of the `small` model at 64 px.
    """

    what: ClassVar[str] = "training config"
    renamed: ClassVar[dict[str, str]] = {"image_size": "size", "lr": "learning_rate"}

    dataset: str = ""
    autoencoder: str | None = None  # an autoencoder run (`sonosynth autoencoder train`): latent diffusion
    # A latent run sees each image in this many augmented versions, each encoded once (`LatentCache`); 0: a fresh
    # augmentation, encoded anew, at every step (about 4x slower at 256 px on a CPU).
    latent_views: int = 8
    init: str | None = None  # start from this earlier run's weights (fine-tuning); ignored on resume
    # Scans without masks (a folder of images, or a dataset folder whose masks are never read): they train the
    # null-condition branch only (classifier-free guidance's unconditional model), so appearance is learned from
    # every scan and the mask condition from the pairs alone. `unannotated_fraction` of each batch comes from them.
    unannotated: str | None = None
    unannotated_fraction: float = 0.5
    model: ModelConfig = field(default_factory=ModelConfig)
    size: int = 64
    patch_size: int | None = None  # None: whole images; else random patches with coordinate channels
    batch_size: int = 8
    grad_accumulation: int = 1
    learning_rate: float = 5e-4
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
    split: str = "auto"  # auto: the `train` split when the dataset is split, else every pair
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig.preset("gentle"))
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
        problems += at_least_one(self, ("size", "batch_size", "grad_accumulation", "max_steps",
                                        "checkpoint_every", "sample_every"))
        problems += patch_problems(self.patch_size, self.size)
        if self.latent_views < 0:
            problems.append("latent_views must not be negative")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            problems.append("cond_drop_prob must be in [0, 1)")
        if self.unannotated and not (0.0 < self.unannotated_fraction < 1.0 and self.batch_size >= 2):
            problems.append("unannotated scans need unannotated_fraction in (0, 1) and batch_size of at least 2 "
                            "(each batch holds both)")
        if problems:
            raise SonosynthError("invalid training config: " + "; ".join(problems))

    @property
    def train_size(self) -> int:
        """Side of the squares the network sees during training."""
        return self.patch_size or self.size


def with_model_size(model: ModelConfig, size: str | None = None, kind: str | None = None) -> ModelConfig:
    """A model config with another size preset/kind: the preset's width/depth fields are re-resolved."""
    data = {k: v for k, v in model.to_dict().items() if k not in SIZE_PRESETS[model.size]}
    if size is not None:
        data["size"] = size
    if kind is not None:
        data["kind"] = kind
    return ModelConfig.from_dict(data)
