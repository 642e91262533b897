"""`sonosynth generate`: a synthetic dataset from a trained model and a source of masks.

Mask sources:
- `train`: the masks of the source dataset as they are (the synthetic twin of the real set);
- `deform`: random affine + elastic deformations of them that keep the anatomy rules;
- `shape`: new anatomy from a PCA shape model fitted to them (optionally at a target head
  circumference, to fill gestational-age gaps).
Every pair is written with its provenance (model, sampler, steps, guidance, seed, mask source,
source pair) and, with a segmenter, its mask-fidelity Dice; low-fidelity pairs are dropped or
flagged. The output is a normal dataset folder (exportable to nnU-Net like any other).
A `joint` model needs no mask source: it draws image and mask together (source pairs give only
the field of view and classes), and its score is how well each mask fits its own image.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sonosynth.data.ellipse import head_circumference_mm
from sonosynth.data.format import (
    Dataset,
    DatasetInfo,
    DatasetWriter,
    Record,
    commit_folder,
    copy_pairs,
    prepare_output,
    update_records,
)
from sonosynth.devices import resolve_device
from sonosynth.errors import DataError, SonosynthError
from sonosynth.synthesis.fidelity import FidelityFilter, Predictor, score_samples
from sonosynth.synthesis.grid import reduce_mask, reduced_fov, reduced_spacing
from sonosynth.synthesis.masks import DeformConfig, ShapeModel, ShapeModelConfig, deform_mask

if TYPE_CHECKING:
    from sonosynth.synthesis.sampling import SynthesisModel

MASK_SOURCES = ("train", "deform", "shape")
HC_ATTRIBUTE = "hc_mm"
"""Free-form attribute the HC18 importer and the phantom use for the head circumference (mm)."""


@dataclass
class AttributePolicy:
    """How conditioning attributes (view, pathology, ...) of each synthetic pair are chosen.

    By default a pair takes the attributes of the real pair its mask comes from (for `shape`, a
    random real pair), which reproduces the source's distribution. `distribution` replaces that by
    a target distribution per attribute (weights need not sum to 1); `fixed` forces a value.
    """

    fixed: dict[str, str] = field(default_factory=dict)
    distribution: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, fixed: Sequence[str] = (), distribution: Sequence[str] = ()) -> AttributePolicy:
        """From CLI strings: `view=4CH` and `pathology=benign:0.5,malignant:0.5`."""
        policy = cls()
        for item in fixed:
            name, sep, value = item.partition("=")
            if not sep or not name or not value:
                raise SonosynthError(f"attribute '{item}': expected NAME=VALUE")
            policy.fixed[name] = value
        for item in distribution:
            name, sep, spec = item.partition("=")
            weights: dict[str, float] = {}
            for part in spec.split(",") if sep else []:
                value, colon, weight = part.partition(":")
                try:
                    weights[value] = float(weight) if colon else 1.0
                except ValueError:
                    raise SonosynthError(f"attribute distribution '{item}': '{weight}' is not a number") from None
            if not name or not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise SonosynthError(f"attribute distribution '{item}': expected NAME=VALUE:WEIGHT,VALUE:WEIGHT")
            policy.distribution[name] = weights
        return policy

    def validate(self, info: DatasetInfo, where: str) -> None:
        categorical = info.categorical_attributes
        for name, values in [*((k, [v]) for k, v in self.fixed.items()), *self.distribution.items()]:
            if name not in categorical:
                raise DataError(f"{where}: '{name}' is not a categorical attribute ({list(categorical)})")
            unknown = [v for v in values if v not in categorical[name]]
            if unknown:
                raise DataError(f"{where}: {name} values {unknown} not among {categorical[name]}")

    def draw(self, rng: np.random.Generator) -> dict[str, str]:
        """Values of the attributes this policy controls (the others come from the source pair)."""
        out: dict[str, str] = {}
        for name, weights in self.distribution.items():
            values = list(weights)
            p = np.array([weights[v] for v in values], dtype=np.float64)
            out[name] = values[int(rng.choice(len(values), p=p / p.sum()))]
        out.update(self.fixed)
        return out


@dataclass
class GenerateConfig:
    """Everything that determines a synthetic dataset (saved in its dataset.json provenance)."""

    mask_source: str = "train"
    n: int = 16
    steps: int = 25
    guidance_scale: float = 1.5
    scheduler: str | None = None  # None: the sampler saved with the model
    seed: int = 0
    batch_size: int = 8
    split: str = "auto"  # auto: the source's `train` split when it has one, else every pair
    deform: DeformConfig = field(default_factory=DeformConfig)
    shape: ShapeModelConfig = field(default_factory=ShapeModelConfig)
    target_hc_mm: tuple[float, float] | None = None  # shape source: uniform in [min, max]
    filter_dice: float | None = None
    filter_mode: str = "drop"
    max_draws_factor: float = 4.0  # drop mode: give up after n * factor draws
    attributes: AttributePolicy = field(default_factory=AttributePolicy)
    device: str = "auto"  # the same seed gives the same images on the same device

    def __post_init__(self) -> None:
        if self.mask_source not in MASK_SOURCES:
            raise SonosynthError(f"mask source must be one of {list(MASK_SOURCES)}, got '{self.mask_source}'")
        if self.n < 1 or self.steps < 1 or self.batch_size < 1:
            raise SonosynthError("n, steps and batch size must be at least 1")
        if self.target_hc_mm is not None and self.mask_source != "shape":
            raise SonosynthError("a target head circumference needs the 'shape' mask source")
        if self.filter_dice is not None:
            FidelityFilter(self.filter_dice, self.filter_mode)  # validates

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SourcePair:
    """A real pair on the model's grid: what the mask sources start from."""

    record: Record
    mask: np.ndarray
    fov: np.ndarray
    spacing_mm: float | None


@dataclass
class Candidate:
    mask: np.ndarray
    fov: np.ndarray
    spacing_mm: float | None
    base: SourcePair
    fell_back: bool = False
    target_hc_mm: float | None = None


def source_records(dataset: Dataset, split: str) -> Dataset:
    if split == "auto":
        split = "train" if any(r.split == "train" for r in dataset.records) else ""
    chosen = dataset.subset(split=split) if split else dataset
    if len(chosen) == 0:
        raise DataError(f"{dataset.root}: no pairs in split '{split}' to take masks from")
    return chosen


def load_source_pairs(dataset: Dataset, size: int, progress: bool = False) -> list[SourcePair]:
    from tqdm.auto import tqdm

    pairs = []
    for sample in tqdm(dataset, total=len(dataset), desc="reading source masks", disable=not progress):
        pairs.append(SourcePair(sample.record, reduce_mask(sample.mask, size), reduced_fov(sample.image, size),
                                reduced_spacing(sample.record.spacing_mm, sample.mask.shape, size)))
    return pairs


class MaskSource:
    """Draws masks (with field of view and pixel size) from one of the three sources.

    A draw can ask for attributes (e.g. view=2CH): masks then come only from source pairs with those
    attributes, so a 2-chamber image is conditioned on 2-chamber anatomy (for `shape`, a shape model
    is fitted per attribute group with at least `min_group` masks). Deformed or sampled masks whose
    foreground falls outside the field of view by more than `fov_tolerance` of its area are redrawn
    (up to `max_fov_tries` times).
    """

    def __init__(self, pairs: Sequence[SourcePair], config: GenerateConfig, progress: bool = False,
                 min_group: int = 5, fov_tolerance: float = 0.02, max_fov_tries: int = 10):
        self.fov_tolerance = fov_tolerance
        self.max_fov_tries = max_fov_tries
        self.pairs = list(pairs)
        self.config = config
        self.progress = progress
        self.min_group = min_group
        self._orders: dict[tuple, list[int]] = {}
        self._shape_models: dict[tuple, ShapeModel] = {}

    def pool(self, attributes: Mapping[str, str]) -> tuple[tuple, list[SourcePair]]:
        key = tuple(sorted(attributes.items()))
        matching = [p for p in self.pairs if all(p.record.attributes.get(k) == v for k, v in attributes.items())]
        return (key, matching) if matching else ((), self.pairs)

    def draw(self, rng: np.random.Generator, attributes: Mapping[str, str] | None = None) -> Candidate:
        key, pool = self.pool(attributes or {})
        if self.config.mask_source == "train":  # every pair once (in random order) before any repeats
            order = self._orders.get(key)
            if not order:
                order = self._orders[key] = [int(i) for i in rng.permutation(len(pool))]
            p = pool[order.pop()]
            return Candidate(p.mask, p.fov, p.spacing_mm, p)
        # New anatomy must lie in the scanner's field of view, or the image could not show it.
        for _ in range(self.max_fov_tries):
            candidate = self._new_mask(rng, key, pool)
            foreground = candidate.mask > 0
            if (foreground & (candidate.fov == 0)).sum() <= self.fov_tolerance * max(1, foreground.sum()):
                break
        return candidate

    def _new_mask(self, rng: np.random.Generator, key: tuple, pool: Sequence[SourcePair]) -> Candidate:
        p = pool[int(rng.integers(len(pool)))]
        if self.config.mask_source == "deform":
            deformed = deform_mask(p.mask, rng, self.config.deform)
            return Candidate(deformed.mask, p.fov, p.spacing_mm, p, fell_back=deformed.fell_back)
        model = self._shape_model(key if len(pool) >= self.min_group else (), pool)
        target = None if self.config.target_hc_mm is None else float(rng.uniform(*self.config.target_hc_mm))
        sampled = model.sample(rng, target_hc_mm=target, shape=p.mask.shape)
        return Candidate(sampled.mask, p.fov, sampled.spacing_mm, p, sampled.fell_back, target)

    def _shape_model(self, key: tuple, pool: Sequence[SourcePair]) -> ShapeModel:
        if key not in self._shape_models:
            members = pool if key else self.pairs
            if self.progress:
                print(f"fitting a shape model to {len(members)} masks" + (f" with {dict(key)}" if key else ""))
            spacings = [p.spacing_mm for p in members]
            self._shape_models[key] = ShapeModel.fit([p.mask for p in members],
                                                     None if None in spacings else spacings, self.config.shape)
        return self._shape_models[key]


def generate_dataset(
    run: str | Path,
    source: str | Path,
    out: str | Path,
    config: GenerateConfig | None = None,
    predictor: Predictor | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write `config.n` synthetic pairs to `out` (see module docstring); returns `out`.

    `predictor` (images -> label maps, e.g. from `fidelity.segmenter_predictor`) scores every pair's
    mask fidelity into the manifest; it is required when `config.filter_dice` is set.
    """
    import torch
    from tqdm.auto import tqdm

    from sonosynth.diffusion.schedulers import scheduler_name
    from sonosynth.synthesis.grid import from_square, to_square
    from sonosynth.synthesis.sampling import load_synthesis_model, sample_seeds

    config = config or GenerateConfig()
    prepare_output(out, overwrite)  # fail before the slow part
    resolve_device(config.device)
    if config.filter_dice is not None and predictor is None:
        raise SonosynthError("--filter-dice needs a segmenter (--segmenter SEGRUN)")
    dataset = Dataset.open(source)
    info = dataset.info
    config.attributes.validate(info, str(source))
    model = load_synthesis_model(run, config.scheduler, config.device)
    if model.kind == "joint":
        return _generate_joint(model, source, Path(out), config, predictor, progress)
    if info.num_labels != model.num_labels:
        raise DataError(f"{source}: {info.num_labels} labels but the model {run} was trained with {model.num_labels}")
    pairs = load_source_pairs(source_records(dataset, config.split), model.size, progress)
    rng = np.random.default_rng(config.seed)
    masks = MaskSource(pairs, config, progress)
    rule = None if config.filter_dice is None else FidelityFilter(config.filter_dice, config.filter_mode)
    categorical = info.categorical_attributes
    max_draws = config.n if rule is None or rule.mode == "flag" else math.ceil(config.n * config.max_draws_factor)
    seeds = sample_seeds(config.seed, max_draws)
    out_info = DatasetInfo(
        name=f"{info.name}-synthetic-{config.mask_source}",
        labels=dict(info.labels),
        modality=info.modality,
        attributes=dict(info.attributes),
        source=f"generated by sonosynth from {run} with masks from {source}",
        license=info.license,
        description=f"Synthetic pairs ({config.mask_source} masks) from the model {run}.",
        provenance={"command": "sonosynth generate", "model": str(run), "source": str(source),
                    "config": _jsonable(config.to_dict()), "model_size": model.size},
    )
    sampler = scheduler_name(model.pipe.scheduler)
    kept = drawn = 0
    with DatasetWriter(out, out_info, overwrite=overwrite) as writer, \
            tqdm(total=config.n, desc=f"generating ({config.mask_source} masks)", disable=not progress) as bar:
        while kept < config.n and drawn < max_draws:
            wanted = [config.attributes.draw(rng) for _ in range(min(config.batch_size, max_draws - drawn))]
            batch = [masks.draw(rng, w) for w in wanted]
            batch_seeds = seeds[drawn : drawn + len(batch)]
            drawn += len(batch)
            rows = [{**_categorical(c.base.record, categorical), **w} for c, w in zip(batch, wanted, strict=True)]
            output = model.pipe(
                labels=to_square([c.mask for c in batch], model.size).long(),
                fov=to_square([c.fov for c in batch], model.size)[:, None],
                class_labels=model.class_tensor(rows, categorical),
                num_inference_steps=config.steps,
                guidance_scale=config.guidance_scale,
                generator=[torch.Generator().manual_seed(s) for s in batch_seeds],
                output_type="np",
            )
            images = from_square(output.images, [c.mask.shape for c in batch])
            # A segmenter always scores (recorded in `fidelity_dice`); only a threshold drops or flags.
            scores = None if predictor is None else score_samples(images, [c.mask for c in batch], predictor,
                                                                  info.num_labels)
            for i, (c, image, attrs, seed) in enumerate(zip(batch, images, rows, batch_seeds, strict=True)):
                keep, flagged = True, False
                if rule is not None:
                    keep, flagged = rule.decide(scores[i])
                if not keep or kept >= config.n:
                    continue
                attributes = {k: v for k, v in attrs.items() if v}
                if config.mask_source == "train":  # free-form attributes (e.g. hc_mm) still describe the mask
                    attributes.update({k: v for k, v in c.base.record.attributes.items()
                                       if v and k not in categorical})
                elif info.attributes.get(HC_ATTRIBUTE, "") is None and c.spacing_mm and info.num_labels == 2:
                    hc = head_circumference_mm(c.mask > 0, c.spacing_mm)  # new anatomy: measure it like the importer
                    if hc is not None:
                        attributes[HC_ATTRIBUTE] = f"{hc:.2f}"
                writer.add(
                    f"synth_{kept:05d}", image, c.mask,
                    subject=(c.base.record.subject or c.base.record.id) if config.mask_source != "shape"
                    else f"shape_{kept:05d}",
                    spacing_mm=c.spacing_mm,
                    extra={
                        "model": str(run), "scheduler": sampler, "steps": config.steps,
                        "guidance": config.guidance_scale, "seed": seed, "mask_source": config.mask_source,
                        "source_id": c.base.record.id, "mask_fallback": int(c.fell_back),
                        "target_hc_mm": "" if c.target_hc_mm is None else round(c.target_hc_mm, 3),
                        "fidelity_dice": "" if scores is None else round(scores[i], 4),
                        "flagged": "" if rule is None else int(flagged),
                    },
                    **attributes,
                )
                kept += 1
                bar.update(1)
        writer.info.provenance.update({"requested": config.n, "written": kept, "drawn": drawn})
    if kept < config.n and progress:
        print(f"warning: only {kept} of {config.n} samples passed the fidelity filter in {drawn} draws")
    return Path(out)


def generate_from_sources(
    run: str | Path,
    source: str | Path,
    out: str | Path,
    counts: Mapping[str, int],
    config: GenerateConfig | None = None,
    progress: bool = True,
) -> Path:
    """One synthetic dataset from several mask sources, e.g. {'deform': 100, 'shape': 100}.

    Each source is generated with `config` (its mask source and n replaced) into a part folder
    that is kept until the merge is written, so an interrupted run redoes only missing parts.
    Ids are prefixed with the source name; the first part's dataset description is kept.
    """
    config = config or GenerateConfig()
    out = Path(out)
    prepare_output(out)
    parts = []
    for mask_source, n in counts.items():
        part = out.with_name(f"{out.name}-{mask_source}")
        if not (part / "manifest.csv").is_file():
            generate_dataset(run, source, part, replace(config, mask_source=mask_source, n=int(n)), overwrite=True,
                             progress=progress)
        parts.append((mask_source, Dataset.open(part)))
    info = parts[0][1].info
    info.provenance = {**info.provenance, "mask_sources": {k: int(v) for k, v in counts.items()}}
    with DatasetWriter(out, info) as writer:
        for mask_source, dataset in parts:
            copy_pairs(writer, dataset, prefix=f"{mask_source}_")
    for _, dataset in parts:
        shutil.rmtree(dataset.root, ignore_errors=True)
    return out


def _categorical(record: Record, categorical: Mapping[str, Sequence[str]]) -> dict[str, str]:
    return {k: v for k, v in record.attributes.items() if k in categorical and v in categorical[k]}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _generate_joint(model: SynthesisModel, source: str | Path, out: Path, config: GenerateConfig,
                    predictor: Predictor | None, progress: bool) -> Path:
    """A joint model draws image and mask together: `n` pairs, with fov and classes from the source pairs.

    `out` was already checked by `prepare_output`; the finished folder replaces it at the end.

    There is no conditioning mask, so the fidelity score compares the generated mask with the
    segmenter's reading of the generated image: how well the mask fits its own image.
    """
    import tempfile

    from sonosynth.diffusion.sample import SampleConfig, sample_dataset
    from sonosynth.diffusion.schedulers import scheduler_name

    if config.mask_source != "train":
        raise SonosynthError(f"{model.run}: a 'joint' model draws its own masks; mask source "
                             f"'{config.mask_source}' needs a mask-conditioned model (spade or concat)")
    if config.attributes.fixed or config.attributes.distribution:
        raise SonosynthError("--attr/--attr-dist need a mask-conditioned model; a joint model's pairs take the "
                             "classes of the source pairs")
    if config.filter_dice is not None:
        raise SonosynthError("--filter-dice needs a mask-conditioned model; a joint model's pairs are scored "
                             "(fidelity_dice) when --segmenter is given, and can be filtered afterwards")
    sample_config = SampleConfig(
        run=model.run, masks=str(source), split="train" if config.split == "auto" else config.split, n=config.n,
        scheduler=config.scheduler or scheduler_name(model.pipe.scheduler), steps=config.steps,
        guidance=config.guidance_scale, seed=config.seed, batch_size=config.batch_size, output_size="cropped",
        device=config.device,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.joint-", dir=out.parent))
    try:
        written = sample_dataset(sample_config, staging / out.name, progress=progress, pipe=model.pipe)
        if predictor is not None:
            dataset = Dataset.open(written)
            pairs = list(dataset)
            scores = score_samples([p.image for p in pairs], [p.mask for p in pairs], predictor,
                                   dataset.info.num_labels)
            for record, score in zip(dataset.records, scores, strict=True):
                record.extra["fidelity_dice"] = f"{score:.4f}"
            update_records(written, dataset.records)
        commit_folder(written, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
