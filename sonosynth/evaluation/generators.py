"""Generator per k: the synthetic arm of a scarce-data cell sees only that cell's k real subjects.

For every (k, seed) of the downstream experiment, `ensure_generator` writes, under
STORE/k<k>__seed<seed>/ (STORE: REPORT/generators, or `--generators DIR` shared by several reports):
- `data/`: a copy of exactly the k subjects' training pairs (what the real arm trains on);
- `unannotated/` (with `--unannotated N`, in STORE/k<k>__seed<seed>__unannotated<N>): the image files, and nothing
  else, of N more pool subjects, which the generator learns appearance from without masks;
- `run/`: a diffusion model trained on `data/` only (resumed from its checkpoints if interrupted), for a
  latent recipe on the latents of `autoencoder/`, trained on `data/`'s images (after `autoencoder-patches/`);
  `training.json` holds the recipe's training fields, and another recipe that trains differently is refused;
- `filter-segmenter-<steps>steps/`: with a fidelity filter, the U-Net trained on `data/` only that scores samples;
- `synthetic/<sampling>/`: pairs sampled from that model with new masks made from `data/`'s masks only, one
  folder per way of sampling (with `hard_candidates` m, the hardest of m x as many candidates, kept beside it in
  `<sampling>__candidates/`) (`GeneratorRecipe.sampling_name`), so the sampling levers of an ablation
  (pairs, mask sources, guidance) reuse one trained generator.
Nothing else of the real dataset reaches the synthetic arm, so a leak would have to be visible in
these folders. Each stage is skipped when its output is complete, so the experiment resumes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from sonosynth.data.format import Dataset, DatasetWriter, copy_pairs
from sonosynth.diffusion.config import TrainConfig
from sonosynth.errors import SonosynthError
from sonosynth.files import read_json_object, write_json_atomic
from sonosynth.settings import Config, without_new_defaults
from sonosynth.stable_diffusion.config import StableDiffusionConfig
from sonosynth.synthesis.generate import GenerateConfig
from sonosynth.training.run import RunFolder

GENERATORS_DIR = "generators"
TRAINING_FILE = "training.json"

# A recipe's own defaults where they differ from `sonosynth train`'s and `sonosynth generate`'s: the `small` spade
# model at 64 px for 1200 steps with a higher learning rate and a short warm-up (what the HC18 ablation trained),
# sampled with 20 DPM-Solver++ steps at guidance 1.5. A section a recipe gives starts from these.
RECIPE_TRAIN: dict[str, Any] = {"learning_rate": 1e-3, "warmup_steps": 20, "max_steps": 1200}
RECIPE_GENERATE: dict[str, Any] = {"steps": 20, "guidance_scale": 1.5}
# What each cell sets, so a recipe may not: the data, its split, the seed, the cadence and the mask source.
CELL_TRAIN_FIELDS = ("dataset", "split", "seed", "checkpoint_every", "sample_every")
CELL_GENERATE_FIELDS = ("mask_source", "n", "seed", "device", "hc_widen")
# The fields of a flat recipe, before the recipe held its configs (still read for one release; `nested_recipe`).
FLAT_FIELDS = ("model_kind", "model_size", "image_size", "train_steps", "batch_size", "lr", "warmup_steps",
               "class_attributes", "autoencoder", "init", "sample_steps", "guidance_scale", "scheduler", "sampler",
               "filter_dice", "base", "lora_rank", "prompt_template")
FLAT_DEFAULTS: dict[str, Any] = {"model_kind": "spade", "model_size": "small", "image_size": 64, "train_steps": 1200,
                                 "batch_size": 8, "lr": 1e-3, "warmup_steps": 20, "sample_steps": 20,
                                 "guidance_scale": 1.5}


def _recipe_train() -> TrainConfig:
    return TrainConfig.from_dict(RECIPE_TRAIN)


def _recipe_generate() -> GenerateConfig:
    return GenerateConfig.from_dict(RECIPE_GENERATE)


@dataclass
class GeneratorRecipe(Config):
    """How each per-k generator is trained and sampled (saved in the report's settings): the `sonosynth train`
    config of a denoiser from scratch (`train`), or of a Stable Diffusion fine-tune (`stable_diffusion`, which
    then replaces `train`), and the `sonosynth generate` config (`generate`), less what each cell sets
    (`CELL_TRAIN_FIELDS`, `CELL_GENERATE_FIELDS`); plus what only the per-k protocol has: how many pairs of
    each mask source, the fidelity filter's segmenter, the shape masks' widening and the per-cell autoencoder."""

    what: ClassVar[str] = "generator recipe"

    train: TrainConfig = field(default_factory=_recipe_train)
    stable_diffusion: StableDiffusionConfig | None = None
    generate: GenerateConfig = field(default_factory=_recipe_generate)
    mask_sources: dict[str, int] = field(default_factory=lambda: {"deform": 100, "shape": 100})
    # Fidelity filter (`generate.filter_dice`): drop samples whose mask Dice under a segmenter trained on the k
    # subjects only (fixed `filter_segmenter_steps`, no validation data: it sees nothing beyond the k subjects).
    filter_segmenter_steps: int = 1500
    # Shape masks' head circumference: uniform over the k subjects' range widened by this fraction at both ends
    # (0.25: 0.75 x their smallest to 1.25 x their largest head), reaching head sizes they do not have. 0: off.
    hc_range_widen: float = 0.0
    # Shape masks' structure size (sqrt of the foreground's area), uniform over the k subjects' range widened by
    # this fraction at both ends: the same lever for any anatomy (BUSI lesions, CAMUS hearts). 0: off.
    size_range_widen: float = 0.0
    # Latent diffusion: > 0 trains an autoencoder on the k subjects' images, `autoencoder_steps` on 64 px
    # patches then `autoencoder_decoder_steps` of its decoder on whole images (`train_patches_then_whole`),
    # starting from `train.autoencoder` when given; `train.autoencoder` alone (steps 0) uses that trained
    # autoencoder as it is. An autoencoder trained on other images is outside the k subjects: a report must say so.
    # So is `train.init` (a denoiser run each generator is fine-tuned from).
    autoencoder_steps: int = 0
    autoencoder_decoder_steps: int = 300
    # Segmenter-in-the-loop synthesis: sample this many candidates per pair and keep, per mask source, the pairs the
    # filter segmenter (trained on the k subjects only) gets most wrong (lowest Dice; above `generate.filter_dice`
    # when that is set, so that unfaithful samples are not what is kept). 1: off.
    hard_candidates: int = 1

    def __post_init__(self) -> None:
        from sonosynth.synthesis.generate import MASK_SOURCES

        if isinstance(self.train, Mapping):
            self.train = TrainConfig.from_dict({**RECIPE_TRAIN, **self.train}, "generator recipe: train")
        if isinstance(self.generate, Mapping):
            self.generate = GenerateConfig.from_dict({**RECIPE_GENERATE, **self.generate}, "generator recipe: generate")
        if isinstance(self.stable_diffusion, Mapping):
            self.stable_diffusion = StableDiffusionConfig.from_dict(self.stable_diffusion,
                                                                    "generator recipe: stable_diffusion")
        for name, kind in (("train", TrainConfig), ("generate", GenerateConfig)):
            if not isinstance(getattr(self, name), kind):
                raise SonosynthError(f"generator recipe: {name} must be a section (a mapping of {kind.what} fields)")
        if not isinstance(self.stable_diffusion, StableDiffusionConfig | None):
            raise SonosynthError("generator recipe: stable_diffusion must be a section (a mapping of its fields)")
        problems = self._section_problems()
        self.mask_sources = {str(k): int(v) for k, v in dict(self.mask_sources).items()}
        unknown = [s for s in self.mask_sources if s not in MASK_SOURCES]
        if unknown or not self.mask_sources or any(n < 1 for n in self.mask_sources.values()):
            problems.append(f"mask_sources must map {list(MASK_SOURCES)} to positive counts, got {self.mask_sources}")
        if self.generate.filter_dice is not None and not 0.0 < self.generate.filter_dice < 1.0:
            problems.append(f"generate.filter_dice must be within (0, 1), got {self.generate.filter_dice}")
        for name in ("hc_range_widen", "size_range_widen"):
            if getattr(self, name) < 0 or (getattr(self, name) and "shape" not in self.mask_sources):
                problems.append(f"{name} must be positive and needs shape masks")
        if self.hc_range_widen and self.size_range_widen:
            problems.append("widen either the head circumference or the size, not both")
        if self.autoencoder_steps < 0 or self.autoencoder_decoder_steps < 1:
            problems.append("autoencoder_steps must not be negative and autoencoder_decoder_steps must be at least 1")
        if problems:
            raise SonosynthError("generator recipe: " + "; ".join(problems))

    def _section_problems(self) -> list[str]:
        """Fields a cell sets, given in the recipe; a Stable Diffusion section that cannot make pairs."""
        cell = "from mask_sources, hc_range_widen, size_range_widen"
        train_default, generate_default = TrainConfig(), GenerateConfig()
        problems = [f"train.{name} is set by each cell" for name in CELL_TRAIN_FIELDS
                    if getattr(self.train, name) != getattr(train_default, name)]
        problems += [f"generate.{name} is set by each cell ({cell})" for name in CELL_GENERATE_FIELDS
                     if getattr(self.generate, name) != getattr(generate_default, name)]
        if self.generate.shape.size_widen:
            problems.append(f"generate.shape.size_widen is set by each cell ({cell})")
        sd = self.stable_diffusion
        if sd is None:
            return problems
        sd_default = StableDiffusionConfig()
        problems += [f"stable_diffusion.{name} is set by each cell" for name in CELL_TRAIN_FIELDS
                     if name != "dataset" and getattr(sd, name) != getattr(sd_default, name)]
        if sd.kind not in ("controlnet", "joint"):
            problems.append(f"stable_diffusion.kind must be controlnet or joint (a segmenter needs masks), got "
                            f"{sd.kind!r}")
        if not sd.base:
            problems.append("stable_diffusion.base must name a Stable Diffusion folder")
        if self.train.to_dict() != _recipe_train().to_dict():
            problems.append("give train or stable_diffusion, not both")
        if self.autoencoder_steps:
            problems.append("a Stable Diffusion base brings its own autoencoder (autoencoder_steps)")
        return problems

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, origin: str | None = None) -> GeneratorRecipe:
        """Strict, as every config; a section given starts from the recipe's defaults (`RECIPE_TRAIN`,
        `RECIPE_GENERATE`); a flat recipe of the previous release (`FLAT_FIELDS`) still reads."""
        data = nested_recipe(dict(data or {}), origin or cls.what)
        for name, defaults in (("train", RECIPE_TRAIN), ("generate", RECIPE_GENERATE)):
            if isinstance(data.get(name), Mapping):
                data[name] = {**defaults, **data[name]}
        return super().from_dict(data, origin)

    @property
    def n_pairs(self) -> int:
        return sum(self.mask_sources.values())

    @property
    def size(self) -> int:
        """The side the generator works at."""
        return (self.stable_diffusion or self.train).size

    def training_fields(self) -> dict[str, Any]:
        """What changes the trained generator (a store's `training.json`)."""
        data = self.to_dict()
        return {k: data[k] for k in ("train", "stable_diffusion", "autoencoder_steps", "autoencoder_decoder_steps")}

    @property
    def sampling_name(self) -> str:
        """The folder name of one way of sampling, e.g. `deform100+shape100__guidance1.5__20steps`; generate
        settings beyond those named add a short hash of themselves."""
        generate = self.generate
        sources = "+".join(f"{name}{n}" for name, n in self.mask_sources.items())
        sampler = f"__{generate.scheduler}" if generate.scheduler else ""
        kept = "" if generate.filter_dice is None else \
            f"__filter{generate.filter_dice:g}-{self.filter_segmenter_steps}steps"
        widened = f"__hc-widen{self.hc_range_widen:g}" if self.hc_range_widen else ""
        widened += f"__size-widen{self.size_range_widen:g}" if self.size_range_widen else ""
        widened += f"__hardest-of{self.hard_candidates}" if self.hard_candidates > 1 else ""
        named = ("steps", "guidance_scale", "scheduler", "filter_dice")
        rest = {k: v for k, v in generate.to_dict().items() if k not in named}
        default = {k: v for k, v in _recipe_generate().to_dict().items() if k not in named}
        other = "" if rest == default else "__" + hashlib.sha256(
            json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]
        return f"{sources}__guidance{generate.guidance_scale:g}__{generate.steps}steps{sampler}{kept}{widened}{other}"


def is_flat_recipe(path: str | Path) -> bool:
    """Whether a recipe file is written in the flat form of release 0.1 (it still reads, `nested_recipe`)."""
    from sonosynth.settings import read_yaml_mapping

    return any(k in FLAT_FIELDS for k in read_yaml_mapping(path, GeneratorRecipe.what))


def nested_recipe(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """A recipe mapping with the fields of a flat recipe of the previous release (`FLAT_FIELDS`) moved into its
    sections, missing ones at that release's defaults (`FLAT_DEFAULTS`), so a saved report or store still matches."""
    flat = [k for k in data if k in FLAT_FIELDS]
    if not flat:
        return data
    sections = [k for k in ("train", "generate", "stable_diffusion") if k in data]
    if sections or ("sampler" in data and "scheduler" in data):
        raise SonosynthError(f"{origin}: {', '.join(flat)} are fields of a flat recipe (the previous release): "
                             "give sections train/stable_diffusion and generate instead (docs/evaluation.md)")
    old = {**FLAT_DEFAULTS, **{k: v for k, v in data.items() if k in FLAT_FIELDS}}
    out: dict[str, Any] = {k: v for k, v in data.items() if k not in FLAT_FIELDS}
    training = {"size": old["image_size"], "max_steps": old["train_steps"], "batch_size": old["batch_size"],
                "learning_rate": old["lr"], "warmup_steps": old["warmup_steps"]}
    if old.get("base"):  # a Stable Diffusion fine-tune; the recipe's guidance was also its saved default
        out["stable_diffusion"] = {**training, "base": old["base"], "kind": old["model_kind"],
                                   "guidance_scale": old["guidance_scale"],
                                   **{k: old[k] for k in ("lora_rank", "prompt_template") if old.get(k) is not None}}
    else:
        out["train"] = {**training, "model": {"kind": old["model_kind"], "size": old["model_size"]},
                        **{k: old[k] for k in ("class_attributes", "autoencoder", "init") if old.get(k) is not None}}
    out["generate"] = {"steps": old["sample_steps"], "guidance_scale": old["guidance_scale"],
                       "scheduler": old.get("scheduler", old.get("sampler")), "filter_dice": old.get("filter_dice")}
    return out


def generator_folder(store: Path, k: str, seed: int, unannotated: str = "") -> Path:
    """STORE/k<k>__seed<seed>[__unannotated<N>]: STORE is REPORT/generators unless the experiment names a shared
    one; a generator that also learned from N subjects' unannotated scans is another generator."""
    return store / f"k{k}__seed{seed}{f'__unannotated{unannotated}' if unannotated else ''}"


def check_training_fields(folder: Path, recipe: GeneratorRecipe) -> None:
    """A generator folder serves only recipes that train the same way (recorded at its first use; a record of
    a flat recipe of the previous release is read as today's)."""
    path = folder / TRAINING_FILE
    wanted = json.loads(json.dumps(recipe.training_fields()))
    if not path.is_file():
        write_json_atomic(path, wanted)
        return
    recorded = read_json_object(path, "generator training record")
    if any(k in FLAT_FIELDS for k in recorded):
        recorded = GeneratorRecipe.from_dict(recorded, str(path)).training_fields()
    recorded = json.loads(json.dumps(recorded))
    wanted = without_new_defaults(wanted, recorded, json.loads(json.dumps(GeneratorRecipe().training_fields())))
    changed = differing_fields(recorded, wanted)
    if changed:
        raise SonosynthError(f"{folder}: its generator was trained with other recipe settings ({', '.join(changed)});"
                             " use another --generators folder for this recipe")


def differing_fields(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the fields where two (nested) mappings differ."""
    names = []
    for key in sorted({*a, *b}):
        x, y = a.get(key), b.get(key)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            names += differing_fields(x, y, f"{prefix}{key}.")
        elif x != y:
            names.append(f"{prefix}{key}")
    return names


def ensure_generator(
    folder: Path,
    real_train: Dataset,
    subjects: list[str],
    recipe: GeneratorRecipe,
    seed: int,
    device: str = "auto",
    progress: bool = True,
    unannotated: Dataset | None = None,
) -> Path:
    """Build (or finish) folder/{data,run,synthetic/<sampling>} for these subjects; returns the synthetic folder.
    With `unannotated` pairs, only their image files are copied, to folder/unannotated/, and the generator learns
    from them without masks (`TrainConfig.unannotated`)."""
    from sonosynth.diffusion.train import train
    from sonosynth.seeds import derive_seed
    from sonosynth.synthesis.generate import generate_from_sources

    data, run, synthetic = folder / "data", folder / "run", folder / "synthetic" / recipe.sampling_name
    folder.mkdir(parents=True, exist_ok=True)
    check_training_fields(folder, recipe)
    chosen = set(subjects)
    subset = real_train.subset(ids=[r.id for r in real_train.records if (r.subject or r.id) in chosen])
    held = sorted(r.id for r in Dataset.open(data).records) if (data / "manifest.csv").is_file() else None
    if held is not None and held != sorted(r.id for r in subset.records):
        raise SonosynthError(f"{folder}: its generator was trained on other pairs than this cell's {len(subset)} "
                             "(e.g. under another --train-where); use another --generators folder")
    scans = None if unannotated is None else _unannotated_images(folder / "unannotated", unannotated)
    if (synthetic / "manifest.csv").is_file():
        return synthetic
    if not (data / "manifest.csv").is_file():
        with DatasetWriter(data, real_train.info, overwrite=True) as writer:
            copy_pairs(writer, subset)
    if not RunFolder(run).has_model and recipe.stable_diffusion is not None:
        _train_stable_diffusion(recipe.stable_diffusion, data, run, seed, device, progress)
    if not RunFolder(run).has_model:
        autoencoder = _autoencoder_for(recipe, data, folder / "autoencoder", seed, device, progress)
        train(replace(recipe.train, autoencoder=autoencoder, unannotated=scans,
                      **_cell_training(recipe.train, data, seed)),
              run, resume=RunFolder(run).has_checkpoints, progress=progress, device=device)
    generate = replace(recipe.generate, seed=derive_seed(seed, "generate"), device=device,
                       shape=replace(recipe.generate.shape, size_widen=recipe.size_range_widen))
    predictor = None
    if recipe.generate.filter_dice is not None or recipe.hard_candidates > 1:
        from sonosynth.synthesis.fidelity import segmenter_predictor

        segmenter = folder / f"filter-segmenter-{recipe.filter_segmenter_steps}steps"
        predictor, _ = segmenter_predictor(_filter_segmenter(recipe, data, segmenter, seed, device))
    if recipe.hard_candidates == 1:
        return generate_from_sources(run, data, synthetic, recipe.mask_sources, generate, progress=progress,
                                     predictor=predictor, shape_hc_widen=recipe.hc_range_widen)
    candidates = synthetic.with_name(f"{synthetic.name}__candidates")
    if not (candidates / "manifest.csv").is_file():
        counts = {name: n * recipe.hard_candidates for name, n in recipe.mask_sources.items()}
        generate_from_sources(run, data, candidates, counts, generate, progress=progress, predictor=predictor,
                              shape_hc_widen=recipe.hc_range_widen, overwrite=True)
    return _keep_hardest(Dataset.open(candidates), synthetic, recipe.mask_sources)


def _keep_hardest(candidates: Dataset, out: Path, counts: dict[str, int]) -> Path:
    """out: the candidates the filter segmenter gets most wrong, `counts` per mask source (`hardest_ids`)."""
    from sonosynth.synthesis.fidelity import hardest_ids

    kept = candidates.subset(ids=hardest_ids(candidates.records, counts))
    with DatasetWriter(out, candidates.info, overwrite=True) as writer:
        copy_pairs(writer, kept)
        writer.info.provenance.update({"hardest_of": len(candidates), "candidates": str(candidates.root.name)})
    return out


def _unannotated_images(out: Path, pairs: Dataset) -> str:
    """out/: the image files of `pairs`, named by id, and nothing of their masks (made once; a folder made for other
    scans is refused)."""
    import shutil

    from sonosynth.files import output_folder

    wanted = sorted(f"{r.id}{pairs.path_of(r).suffix}" for r in pairs.records)
    if out.is_dir():
        if sorted(p.name for p in out.iterdir()) != wanted:
            raise SonosynthError(f"{out}: holds the scans of other subjects than this cell's {len(wanted)}; use "
                                 "another --generators folder")
        return str(out)
    with output_folder(out) as tmp:
        for record in pairs.records:
            shutil.copyfile(pairs.path_of(record), tmp / f"{record.id}{pairs.path_of(record).suffix}")
    return str(out)


def _cell_training(config: TrainConfig | StableDiffusionConfig, data: Path, seed: int) -> dict[str, Any]:
    """What each cell sets in its generator's training config: its data, seed and cadence."""
    from sonosynth.seeds import derive_seed

    steps = config.max_steps
    return {"dataset": str(data), "split": "all",  # the cell's data folder holds the k subjects' training pairs only
            "warmup_steps": min(config.warmup_steps, steps), "checkpoint_every": max(1, steps // 4),
            "sample_every": steps, "seed": derive_seed(seed, "generator")}


def _filter_segmenter(recipe: GeneratorRecipe, data: Path, out: Path, seed: int, device: str) -> Path:
    """A U-Net trained on the k subjects' pairs only, for the fidelity filter (trained once per generator)."""
    if (out / "model.safetensors").is_file():
        return out
    from sonosynth.augment import AugmentConfig
    from sonosynth.seeds import derive_seed
    from sonosynth.segmentation.common import SegmentationConfig, load_pairs, save_segmenter
    from sonosynth.segmentation.train import train_segmenter

    dataset = Dataset.open(data)
    config = SegmentationConfig(size=recipe.size, max_steps=recipe.filter_segmenter_steps,
                                val_every=recipe.filter_segmenter_steps, labels=dict(dataset.info.labels),
                                classical=AugmentConfig.preset("classical"), seed=derive_seed(seed, "filter"))
    result = train_segmenter(config, load_pairs(dataset, config.size), progress=False, device=device)
    return save_segmenter(out, result, overwrite=True)


def _autoencoder_for(recipe: GeneratorRecipe, data: Path, out: Path, seed: int, device: str, progress: bool
                     ) -> str | None:
    """The latent generator's autoencoder: trained here on `data` (the k subjects) when the recipe says so."""
    if not recipe.autoencoder_steps:
        return recipe.train.autoencoder
    from sonosynth.autoencoder.config import AutoencoderConfig
    from sonosynth.autoencoder.train import train_patches_then_whole
    from sonosynth.seeds import derive_seed

    steps = recipe.autoencoder_steps
    size = recipe.train.size
    config = AutoencoderConfig(datasets=[str(data)], split="all", init=recipe.train.autoencoder, size=size,
                               patch_size=min(64, size // 2), learning_rate=2e-4, max_steps=steps,
                               adversarial_start=steps // 6, checkpoint_every=max(1, steps // 4), sample_every=steps,
                               seed=derive_seed(seed, "autoencoder"))
    return str(train_patches_then_whole(config, out, recipe.autoencoder_decoder_steps, progress, device))


def _train_stable_diffusion(config: StableDiffusionConfig, data: Path, run: Path, seed: int, device: str,
                            progress: bool) -> None:
    from sonosynth.stable_diffusion.train import train_stable_diffusion

    train_stable_diffusion(replace(config, **_cell_training(config, data, seed)), run,
                           resume=RunFolder(run).has_checkpoints, progress=progress, device=device)
