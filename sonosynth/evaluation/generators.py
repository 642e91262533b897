"""Generator per k: the synthetic arm of a scarce-data cell sees only that cell's k real subjects.

For every (k, seed) of the downstream experiment, `ensure_generator` writes, under
STORE/k<k>__seed<seed>/ (STORE: REPORT/generators, or `--generators DIR` shared by several reports):
- `data/`: a copy of exactly the k subjects' training pairs (what the real arm trains on);
- `run/`: a diffusion model trained on `data/` only (resumed from its checkpoints if interrupted), for a
  latent recipe on the latents of `autoencoder/`, trained on `data/`'s images (after `autoencoder-patches/`);
  `training.json` holds the recipe's training fields, and another recipe that trains differently is refused;
- `filter-segmenter-<steps>steps/`: with a fidelity filter, the U-Net trained on `data/` only that scores samples;
- `synthetic/<sampling>/`: pairs sampled from that model with new masks made from `data/`'s masks only, one
  folder per way of sampling (`GeneratorRecipe.sampling_name`), so the sampling levers of an ablation
  (pairs, mask sources, guidance) reuse one trained generator.
Nothing else of the real dataset reaches the synthetic arm, so a leak would have to be visible in
these folders. Each stage is skipped when its output is complete, so the experiment resumes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sonosynth.data.format import Dataset, DatasetWriter, copy_pairs
from sonosynth.errors import SonosynthError
from sonosynth.files import read_json_object, write_json_atomic
from sonosynth.settings import Config, without_new_defaults
from sonosynth.training.run import RunFolder

GENERATORS_DIR = "generators"
TRAINING_FILE = "training.json"
SAMPLING_FIELDS = ("mask_sources", "sample_steps", "guidance_scale", "scheduler", "filter_dice",
                   "filter_segmenter_steps", "hc_range_widen", "size_range_widen")
OLD_NAMES = {"sampler": "scheduler"}  # recipe fields renamed to the word the rest of sonosynth uses (glossary)
"""The recipe fields that change only the sampling: everything else changes the trained generator."""


@dataclass
class GeneratorRecipe(Config):
    """How each per-k generator is trained and sampled (saved in the report's settings)."""

    what: ClassVar[str] = "generator recipe"

    model_kind: str = "spade"
    model_size: str = "small"
    image_size: int = 64
    train_steps: int = 1200
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 20
    class_attributes: list[str] = field(default_factory=list)  # e.g. [pathology] for BUSI, [view, phase] for CAMUS
    mask_sources: dict[str, int] = field(default_factory=lambda: {"deform": 100, "shape": 100})
    sample_steps: int = 20
    guidance_scale: float = 1.5
    scheduler: str | None = None  # the sampler, as `generate --scheduler`; None: the one saved with the model
    # Fidelity filter: drop samples whose mask Dice under a segmenter trained on the k subjects only (fixed
    # `filter_segmenter_steps`, no validation data: the filter sees nothing beyond the k subjects) is below this.
    filter_dice: float | None = None
    filter_segmenter_steps: int = 1500
    # Shape masks' head circumference: uniform over the k subjects' range widened by this fraction at both ends
    # (0.25: 0.75 x their smallest to 1.25 x their largest head), reaching head sizes they do not have. 0: off.
    hc_range_widen: float = 0.0
    # Shape masks' structure size (sqrt of the foreground's area), uniform over the k subjects' range widened by
    # this fraction at both ends: the same lever for any anatomy (BUSI lesions, CAMUS hearts). 0: off.
    size_range_widen: float = 0.0
    # A local Stable Diffusion folder instead of a model from scratch (model_kind controlnet or joint;
    # model_size and class_attributes do not apply: the prompt template names the attributes).
    base: str | None = None
    lora_rank: int | None = None
    prompt_template: str | None = None
    # Latent diffusion: > 0 trains an autoencoder on the k subjects' images, `autoencoder_steps` on 64 px
    # patches then `autoencoder_decoder_steps` of its decoder on whole images (`train_patches_then_whole`),
    # starting from `autoencoder` when given; `autoencoder` alone (steps 0) uses that trained autoencoder as it
    # is. An autoencoder trained on other images is outside the k subjects: a report must say so.
    autoencoder: str | None = None
    autoencoder_steps: int = 0
    autoencoder_decoder_steps: int = 300
    # A denoiser run to fine-tune each generator from (`sonosynth train --init`), e.g. one pretrained on other
    # ultrasound datasets merged with `sonosynth data merge --foreground`: outside the k subjects, a report must
    # say so. Same network and label count as this recipe's.
    init: str | None = None

    def __post_init__(self) -> None:
        from sonosynth.synthesis.generate import MASK_SOURCES

        if self.base and self.model_kind not in ("controlnet", "joint"):
            raise SonosynthError(f"generator recipe: with base, model_kind must be controlnet or joint (a segmenter "
                                 f"needs masks), got {self.model_kind!r}")
        if not self.base and (self.model_kind == "controlnet" or self.lora_rank or self.prompt_template):
            raise SonosynthError("generator recipe: controlnet, lora_rank and prompt_template need base (a Stable "
                                 "Diffusion folder)")

        self.class_attributes = [str(a) for a in self.class_attributes]
        self.mask_sources = {str(k): int(v) for k, v in dict(self.mask_sources).items()}
        unknown = [s for s in self.mask_sources if s not in MASK_SOURCES]
        if unknown or not self.mask_sources or any(n < 1 for n in self.mask_sources.values()):
            raise SonosynthError(
                f"generator recipe: mask_sources must map {list(MASK_SOURCES)} to positive counts, "
                f"got {self.mask_sources}"
            )
        for name in ("image_size", "train_steps", "batch_size", "sample_steps"):
            if int(getattr(self, name)) < 1:
                raise SonosynthError(f"generator recipe: {name} must be at least 1")
        if self.filter_dice is not None and not 0.0 < self.filter_dice < 1.0:
            raise SonosynthError(f"generator recipe: filter_dice must be within (0, 1), got {self.filter_dice}")
        for name in ("hc_range_widen", "size_range_widen"):
            if getattr(self, name) < 0 or (getattr(self, name) and "shape" not in self.mask_sources):
                raise SonosynthError(f"generator recipe: {name} must be positive and needs shape masks")
        if self.hc_range_widen and self.size_range_widen:
            raise SonosynthError("generator recipe: widen either the head circumference or the size, not both")
        if self.autoencoder_steps < 0 or self.autoencoder_decoder_steps < 1:
            raise SonosynthError("generator recipe: autoencoder_steps must not be negative and "
                                 "autoencoder_decoder_steps must be at least 1")
        if self.base and (self.autoencoder or self.autoencoder_steps):
            raise SonosynthError("generator recipe: a Stable Diffusion base brings its own autoencoder")
        if self.base and self.init:
            raise SonosynthError("generator recipe: init fine-tunes a denoiser of ours; a Stable Diffusion base "
                                 "is already pretrained")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, origin: str | None = None) -> GeneratorRecipe:
        """Strict, as every config; `sampler` (`scheduler` before it took the word the CLI uses) still reads."""
        return super().from_dict(renamed_fields(dict(data or {})), origin)

    @property
    def n_pairs(self) -> int:
        return sum(self.mask_sources.values())

    def training_fields(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k not in SAMPLING_FIELDS}

    @property
    def sampling_name(self) -> str:
        """The folder name of one way of sampling, e.g. `deform100+shape100__guidance1.5__20steps`."""
        sources = "+".join(f"{name}{n}" for name, n in self.mask_sources.items())
        sampler = f"__{self.scheduler}" if self.scheduler else ""
        kept = "" if self.filter_dice is None else f"__filter{self.filter_dice:g}-{self.filter_segmenter_steps}steps"
        widened = f"__hc-widen{self.hc_range_widen:g}" if self.hc_range_widen else ""
        widened += f"__size-widen{self.size_range_widen:g}" if self.size_range_widen else ""
        return f"{sources}__guidance{self.guidance_scale:g}__{self.sample_steps}steps{sampler}{kept}{widened}"


def renamed_fields(recipe: dict[str, Any]) -> dict[str, Any]:
    """A saved recipe with its old field names (`OLD_NAMES`) read as today's."""
    return {OLD_NAMES.get(k, k) if OLD_NAMES.get(k) not in recipe else k: v for k, v in recipe.items()}


def generator_folder(store: Path, k: str, seed: int) -> Path:
    """STORE/k<k>__seed<seed>: STORE is REPORT/generators unless the experiment names a shared one."""
    return store / f"k{k}__seed{seed}"


def check_training_fields(folder: Path, recipe: GeneratorRecipe) -> None:
    """A generator folder serves only recipes that train the same way (recorded at its first use)."""
    path = folder / TRAINING_FILE
    wanted = json.loads(json.dumps(recipe.training_fields()))
    if not path.is_file():
        write_json_atomic(path, wanted)
        return
    recorded = read_json_object(path, "generator training record")
    wanted = without_new_defaults(wanted, recorded, json.loads(json.dumps(GeneratorRecipe().training_fields())))
    if recorded != wanted:
        changed = sorted(k for k in {**recorded, **wanted} if recorded.get(k) != wanted.get(k))
        raise SonosynthError(f"{folder}: its generator was trained with other recipe settings ({', '.join(changed)});"
                             " use another --generators folder for this recipe")


def ensure_generator(
    folder: Path,
    real_train: Dataset,
    subjects: list[str],
    recipe: GeneratorRecipe,
    seed: int,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Build (or finish) folder/{data,run,synthetic/<sampling>} for these subjects; returns the synthetic folder."""
    from sonosynth.diffusion.config import TrainConfig, with_model_size
    from sonosynth.diffusion.train import train
    from sonosynth.models.configs import ModelConfig
    from sonosynth.seeds import derive_seed
    from sonosynth.synthesis.generate import GenerateConfig, generate_from_sources
    from sonosynth.synthesis.masks import ShapeModelConfig

    data, run, synthetic = folder / "data", folder / "run", folder / "synthetic" / recipe.sampling_name
    folder.mkdir(parents=True, exist_ok=True)
    check_training_fields(folder, recipe)
    chosen = set(subjects)
    subset = real_train.subset(ids=[r.id for r in real_train.records if (r.subject or r.id) in chosen])
    held = sorted(r.id for r in Dataset.open(data).records) if (data / "manifest.csv").is_file() else None
    if held is not None and held != sorted(r.id for r in subset.records):
        raise SonosynthError(f"{folder}: its generator was trained on other pairs than this cell's {len(subset)} "
                             "(e.g. under another --train-where); use another --generators folder")
    if (synthetic / "manifest.csv").is_file():
        return synthetic
    if not (data / "manifest.csv").is_file():
        with DatasetWriter(data, real_train.info, overwrite=True) as writer:
            copy_pairs(writer, subset)
    if not RunFolder(run).has_model and recipe.base:
        _train_stable_diffusion(recipe, data, run, seed, device, progress)
    if not RunFolder(run).has_model:
        steps = recipe.train_steps
        config = TrainConfig(
            dataset=str(data),
            split="all",  # the cell's data folder holds the k subjects' training pairs only
            autoencoder=_autoencoder_for(recipe, data, folder / "autoencoder", seed, device, progress),
            model=with_model_size(ModelConfig(kind=recipe.model_kind), recipe.model_size),
            image_size=recipe.image_size,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            warmup_steps=min(recipe.warmup_steps, steps),
            max_steps=steps,
            checkpoint_every=max(1, steps // 4),
            sample_every=steps,
            class_attributes=list(recipe.class_attributes),
            seed=derive_seed(seed, "generator"),
            init=recipe.init,
        )
        train(config, run, resume=RunFolder(run).has_checkpoints, progress=progress, device=device)
    generate = GenerateConfig(
        steps=recipe.sample_steps,
        guidance_scale=recipe.guidance_scale,
        scheduler=recipe.scheduler,
        seed=derive_seed(seed, "generate"),
        device=device,
        filter_dice=recipe.filter_dice,
        shape=ShapeModelConfig(size_widen=recipe.size_range_widen),
    )
    predictor = None
    if recipe.filter_dice is not None:
        from sonosynth.synthesis.fidelity import segmenter_predictor

        segmenter = folder / f"filter-segmenter-{recipe.filter_segmenter_steps}steps"
        predictor, _ = segmenter_predictor(_filter_segmenter(recipe, data, segmenter, seed, device))
    return generate_from_sources(run, data, synthetic, recipe.mask_sources, generate, progress=progress,
                                 predictor=predictor, shape_hc_widen=recipe.hc_range_widen)


def _filter_segmenter(recipe: GeneratorRecipe, data: Path, out: Path, seed: int, device: str) -> Path:
    """A U-Net trained on the k subjects' pairs only, for the fidelity filter (trained once per generator)."""
    if (out / "model.safetensors").is_file():
        return out
    from sonosynth.augment import AugmentConfig
    from sonosynth.seeds import derive_seed
    from sonosynth.segmentation.common import SegmentationConfig, load_pairs, save_segmenter
    from sonosynth.segmentation.train import train_segmenter

    dataset = Dataset.open(data)
    config = SegmentationConfig(size=recipe.image_size, max_steps=recipe.filter_segmenter_steps,
                                val_every=recipe.filter_segmenter_steps, labels=dict(dataset.info.labels),
                                classical=AugmentConfig.preset("classical"), seed=derive_seed(seed, "filter"))
    result = train_segmenter(config, load_pairs(dataset, config.size), progress=False, device=device)
    return save_segmenter(out, result, overwrite=True)


def _autoencoder_for(recipe: GeneratorRecipe, data: Path, out: Path, seed: int, device: str, progress: bool
                     ) -> str | None:
    """The latent generator's autoencoder: trained here on `data` (the k subjects) when the recipe says so."""
    if not recipe.autoencoder_steps:
        return recipe.autoencoder
    from sonosynth.autoencoder.config import AutoencoderConfig
    from sonosynth.autoencoder.train import train_patches_then_whole
    from sonosynth.seeds import derive_seed

    steps = recipe.autoencoder_steps
    config = AutoencoderConfig(datasets=[str(data)], split="all", init=recipe.autoencoder, image_size=recipe.image_size,
                               patch_size=min(64, recipe.image_size // 2), lr=2e-4, max_steps=steps,
                               adversarial_start=steps // 6, checkpoint_every=max(1, steps // 4), sample_every=steps,
                               seed=derive_seed(seed, "autoencoder"))
    return str(train_patches_then_whole(config, out, recipe.autoencoder_decoder_steps, progress, device))


def _train_stable_diffusion(recipe: GeneratorRecipe, data: Path, run: Path, seed: int, device: str,
                            progress: bool) -> None:
    from sonosynth.seeds import derive_seed
    from sonosynth.stable_diffusion.config import StableDiffusionConfig
    from sonosynth.stable_diffusion.train import train_stable_diffusion

    steps = recipe.train_steps
    config = StableDiffusionConfig(
        dataset=str(data), split="all", base=str(recipe.base), kind=recipe.model_kind, image_size=recipe.image_size,
        batch_size=recipe.batch_size, lr=recipe.lr, warmup_steps=min(recipe.warmup_steps, steps), max_steps=steps,
        lora_rank=recipe.lora_rank, checkpoint_every=max(1, steps // 4), sample_every=steps,
        guidance_scale=recipe.guidance_scale, seed=derive_seed(seed, "generator"),
        **({"prompt_template": recipe.prompt_template} if recipe.prompt_template else {}),
    )
    train_stable_diffusion(config, run, resume=RunFolder(run).has_checkpoints, progress=progress, device=device)
