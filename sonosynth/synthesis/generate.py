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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sonosynth.data.ellipse import head_circumference_mm
from sonosynth.data.format import (
    Dataset,
    DatasetInfo,
    DatasetWriter,
    Record,
    copy_pairs,
)
from sonosynth.data.imageio import unit_to_pixels
from sonosynth.data.validate import require_valid
from sonosynth.devices import resolve_device
from sonosynth.errors import DataError, SonosynthError
from sonosynth.files import prepare_output, require_space
from sonosynth.settings import Config
from sonosynth.synthesis.fidelity import FidelityFilter, Predictor, score_samples
from sonosynth.synthesis.grid import reduce_mask, reduced_fov, reduced_spacing
from sonosynth.synthesis.masks import DeformConfig, ShapeModel, ShapeModelConfig, deform_mask
from sonosynth.synthesis.masks.anomaly import make_anomaly, parse_anomaly

if TYPE_CHECKING:
    from sonosynth.synthesis.sampling import SynthesisModel

MASK_SOURCES = ("train", "deform", "shape")
OUTPUT_SIZES = ("cropped", "source", "square")
HC_ATTRIBUTE = "hc_mm"
"""Free-form attribute the HC18 importer and the phantom use for the head circumference (mm)."""
RECOMMENDED_MASK_SOURCES = ("deform", "shape")
RECOMMENDED_WIDEN = 0.25
"""The recipe the HC18 ablation supports (docs/results/hc18-ablation): deformed and shape-model masks in equal
parts, the shape masks' sizes over the source's range widened by a quarter at both ends."""


def recommended_widening(source: Dataset) -> tuple[float, float]:
    """(hc_widen, size_widen) of the recommended recipe: widen the head circumference where the source pairs
    record one (hc-widen, the stronger lever), else the structure's size in pixels (size-widen, any anatomy)."""
    if any(r.attributes.get(HC_ATTRIBUTE) for r in source.records):
        return RECOMMENDED_WIDEN, 0.0
    return 0.0, RECOMMENDED_WIDEN


@dataclass
class AttributePolicy(Config):
    """How conditioning attributes (view, pathology, ...) of each synthetic pair are chosen.

    By default a pair takes the attributes of the real pair its mask comes from (for `shape`, a
    random real pair), which reproduces the source's distribution. `distribution` replaces that by
    a target distribution per attribute (weights need not sum to 1); `fixed` forces a value.
    """

    what: ClassVar[str] = "attribute policy"

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
class GenerateConfig(Config):
    """Everything that determines a synthetic dataset (saved in its dataset.json provenance)."""

    what: ClassVar[str] = "generation"

    mask_source: str = "train"
    n: int | None = 16  # None: one pair per source pair (train masks)
    steps: int = 25
    guidance_scale: float | None = None  # None: the run's own default (1.5; a Stable Diffusion run's saved one)
    scheduler: str | None = None  # None: the sampler saved with the model
    seed: int = 0
    batch_size: int = 8
    split: str = "auto"  # auto: the source's `train` split when it is split, else every pair; all; a split name
    output_size: str = "cropped"  # cropped (model scale, no padding), source (the source pair's size), square
    deform: DeformConfig = field(default_factory=DeformConfig)
    shape: ShapeModelConfig = field(default_factory=ShapeModelConfig)
    target_hc_mm: tuple[float, float] | None = None  # shape source: uniform in [min, max]
    # shape source: uniform over the source pairs' head-circumference range widened by this fraction at both ends
    # (0.25: 0.75 x the smallest to 1.25 x the largest head), so new masks reach head sizes the source lacks
    hc_widen: float = 0.0
    filter_dice: float | None = None
    filter_mode: str = "drop"
    max_draws_factor: float = 4.0  # drop mode: give up after n * factor draws
    attributes: AttributePolicy = field(default_factory=AttributePolicy)
    prompt: str | None = None  # a Stable Diffusion run: this text instead of its template's prompt
    conditioning_scale: float | None = None  # a ControlNet run: the weight of the mask (None: as saved)
    # Every drawn mask's structure `anomaly_label` edited into a malignant-looking one, e.g. `spiculated` or
    # `spiculated+taller-than-wide` (synthesis/masks/anomaly.py); masks without that structure stay as they are.
    anomaly: str | None = None
    anomaly_label: int = 1
    device: str = "auto"  # the same seed gives the same images on the same device

    def __post_init__(self) -> None:
        if self.mask_source not in MASK_SOURCES:
            raise SonosynthError(f"mask source must be one of {list(MASK_SOURCES)}, got '{self.mask_source}'")
        if (self.n is not None and self.n < 1) or self.steps < 1 or self.batch_size < 1:
            raise SonosynthError("n, steps and batch size must be at least 1")
        if self.n is None and self.mask_source != "train":
            raise SonosynthError(f"'{self.mask_source}' masks are new: say how many pairs to generate (n)")
        if self.output_size not in OUTPUT_SIZES:
            raise SonosynthError(f"output size must be one of {', '.join(OUTPUT_SIZES)}, got '{self.output_size}'")
        if (self.target_hc_mm is not None or self.hc_widen) and self.mask_source != "shape":
            raise SonosynthError("a target head circumference needs the 'shape' mask source")
        if self.hc_widen < 0 or (self.hc_widen and self.target_hc_mm is not None):
            raise SonosynthError("give either a head-circumference range or a positive widening of the source's")
        if self.shape.size_widen and (self.hc_widen or self.target_hc_mm is not None):
            raise SonosynthError("a head-circumference target sets the shape's size: it cannot be combined with a "
                                 "widened size range")
        if self.filter_dice is not None:
            FidelityFilter(self.filter_dice, self.filter_mode)  # validates
        parse_anomaly(self.anomaly)
        if self.anomaly_label < 1:
            raise SonosynthError(f"anomaly_label must be a structure's label (1 or more), got {self.anomaly_label}")



@dataclass
class SourcePair:
    """A real pair on the model's grid: what the mask sources start from."""

    record: Record
    mask: np.ndarray
    fov: np.ndarray
    spacing_mm: float | None
    shape: tuple[int, int] = (0, 0)  # the source pair's own size
    full_mask: np.ndarray | None = None  # at its own size, kept for output size `source`
    full_fov: np.ndarray | None = None


@dataclass
class Candidate:
    mask: np.ndarray
    fov: np.ndarray
    spacing_mm: float | None
    base: SourcePair | None  # None: a joint model's full square without a source
    fell_back: bool = False
    target_hc_mm: float | None = None
    anomaly: str = ""  # the anomaly its mask was edited into (`GenerateConfig.anomaly`), if any


def load_source_pairs(dataset: Dataset, size: int, progress: bool = False, keep_full: bool = False) -> list[SourcePair]:
    """The pairs on the model's grid; `keep_full` also keeps each mask and fov at its own size."""
    from sonosynth.data.transforms import field_of_view
    from sonosynth.progress import progress_bar

    pairs = []
    for sample in progress_bar(dataset, total=len(dataset), desc="reading source masks", disable=not progress):
        pairs.append(SourcePair(sample.record, reduce_mask(sample.mask, size), reduced_fov(sample.image, size),
                                reduced_spacing(sample.record.spacing_mm, sample.mask.shape, size),
                                shape=tuple(sample.mask.shape),
                                full_mask=sample.mask if keep_full else None,
                                full_fov=field_of_view(sample.image) if keep_full else None))
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
        """A mask from this source (for `attributes`), edited into the configured anomaly when it has one."""
        candidate = self._draw(rng, attributes)
        label, anomaly = self.config.anomaly_label, self.config.anomaly
        if anomaly and (candidate.mask == label).any():
            candidate = replace(candidate, mask=make_anomaly(candidate.mask, anomaly, rng, label), anomaly=anomaly)
        return candidate

    def _draw(self, rng: np.random.Generator, attributes: Mapping[str, str] | None = None) -> Candidate:
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
        if self.config.mask_source == "deform":
            p = pool[int(rng.integers(len(pool)))]
            deformed = deform_mask(p.mask, rng, self.config.deform)
            return Candidate(deformed.mask, p.fov, p.spacing_mm, p, fell_back=deformed.fell_back)
        # A shape mask always draws the structure, so its field of view and attributes come from a pair that
        # has one: a BUSI `normal` pair would label a sampled lesion `normal`. A group without any structure
        # (every pair normal) keeps its anatomy: none.
        with_structure = [q for q in pool if (q.mask > 0).any()]
        if not with_structure:
            p = pool[int(rng.integers(len(pool)))]
            return Candidate(p.mask.copy(), p.fov, p.spacing_mm, p)
        p = with_structure[int(rng.integers(len(with_structure)))]
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


def _load_model(run: str | Path, config: GenerateConfig) -> tuple[Any, GenerateConfig]:
    """The model with its sampler and prompt; `config` with the run's own guidance where none was asked for
    (recorded as such in the provenance)."""
    from sonosynth.synthesis.sampling import load_synthesis_model

    model = load_synthesis_model(run, config.scheduler, config.device)
    model.steer(config.prompt, config.conditioning_scale)
    if config.guidance_scale is None:
        config = replace(config, guidance_scale=model.default_guidance)
    if not model.conditioned_on_masks:
        _check_joint_request(model, config)
    return model, config


def _model_columns(model: Any, run: str | Path, config: GenerateConfig) -> dict[str, Any]:
    """The manifest columns every pair shares: which model, checkpoint, sampler, steps and guidance made it."""
    from sonosynth.diffusion.schedulers import scheduler_name

    step = model.pipe.config.get("training_step")
    return {"model": str(run), "checkpoint_step": "" if step is None else str(step),
            "scheduler": scheduler_name(model.pipe.scheduler), "steps": config.steps,
            "guidance": config.guidance_scale}


def _source_pairs(dataset: Dataset | None, model: Any, config: GenerateConfig, source: str, run: str,
                  progress: bool) -> tuple[DatasetInfo, list[SourcePair]]:
    """The labels the pairs will have and the source pairs whose masks are drawn from (none for a joint model
    without a source dataset)."""
    joint = not model.conditioned_on_masks
    if dataset is None:
        if not joint:
            raise SonosynthError(f"a '{model.kind}' model generates from masks: pass a source dataset (--source)")
        if config.n is None:
            raise SonosynthError("without a source dataset, pass --n (number of pairs to generate)")
        return DatasetInfo(name="synthetic", labels={str(k): "background" if k == 0 else f"label_{k}"
                                                     for k in range(model.num_labels)}), []
    info = dataset.info
    # A joint model makes its own masks: the source only has to fit within its labels.
    if info.num_labels > model.num_labels or (not joint and info.num_labels != model.num_labels):
        raise DataError(f"{source}: {info.num_labels} labels but the model {run} was trained with "
                        f"{model.num_labels}")
    sources = dataset.select(config.split, what="pairs to take masks from")
    require_valid(sources, "source pairs")
    return info, load_source_pairs(sources, model.size, progress, keep_full=config.output_size == "source")


def _output_info(info: DatasetInfo, config: GenerateConfig, drawing: GenerateConfig, model: Any, run: str | Path,
                 source: str | Path | None, command: str) -> DatasetInfo:
    """dataset.json of the synthetic dataset: the source's labels and attributes, and how it was made."""
    step = model.pipe.config.get("training_step")
    joint = not model.conditioned_on_masks
    return DatasetInfo(
        name=f"{info.name}-synthetic-{config.mask_source}",
        labels=dict(info.labels),
        modality=info.modality,
        organ=info.organ,
        attributes=dict(info.attributes),
        source=f"generated by sonosynth from {run}" + (f" with masks from {source}" if source else ""),
        license=info.license,
        description=f"Synthetic pairs ({config.mask_source} masks) from the model {run}." if not joint else
        f"Synthetic pairs from the joint model {run} (image and mask generated together).",
        provenance={"command": command, "model": str(run), "source": "" if source is None else str(source),
                    "config": _jsonable(config.to_dict()), "model_size": model.size, "kind": model.kind,
                    "checkpoint_step": "" if step is None else int(step),
                    **({"hc_range_mm": list(drawing.target_hc_mm)} if config.hc_widen else {})},
    )


def _sample(model: Any, batch: list[Any], rows: list[dict[str, str]], seeds: list[int], config: GenerateConfig
            ) -> Any:
    """One pipeline call for a batch of drawn masks (a joint model draws its own), each image from its own seed."""
    import torch

    from sonosynth.synthesis.grid import to_square

    return model.pipe(
        labels=to_square([c.mask for c in batch], model.size).long() if model.conditioned_on_masks else None,
        fov=to_square([c.fov for c in batch], model.size)[:, None],
        class_labels=model.class_tensor(rows),
        num_inference_steps=config.steps,
        guidance_scale=config.guidance_scale,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="np",
        prompt=config.prompt,
    )


def _pair_attributes(c: Any, drawn: dict[str, str], config: GenerateConfig, info: DatasetInfo, joint: bool
                     ) -> dict[str, str]:
    """A pair's manifest attributes: those drawn for it, and what still describes its mask (a train mask's
    free-form attributes; a new head's circumference, measured like the importer)."""
    attributes = {k: v for k, v in drawn.items() if v}
    record = c.base.record if c.base else None
    if config.mask_source == "train" and record is not None and not joint:
        categorical = info.categorical_attributes
        attributes.update({k: v for k, v in record.attributes.items() if v and k not in categorical})
    elif info.attributes.get(HC_ATTRIBUTE, "") is None and c.spacing_mm and info.num_labels == 2 and not joint:
        hc = head_circumference_mm(c.mask > 0, c.spacing_mm)
        if hc is not None:
            attributes[HC_ATTRIBUTE] = f"{hc:.2f}"
    return attributes


def generate_dataset(
    run: str | Path,
    source: str | Path | None,
    out: str | Path,
    config: GenerateConfig | None = None,
    predictor: Predictor | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "sonosynth generate",
) -> Path:
    """Write `config.n` synthetic pairs to `out` (see module docstring); returns `out`.

    The one dataset writer: `sonosynth generate` and `sonosynth sample` (train masks as they are)
    both come here. `source` may be None only for a joint model (full-square fov, no attributes).
    `predictor` (images -> label maps, e.g. from `fidelity.segmenter_predictor`) scores every pair's
    mask fidelity into the manifest; it is required when `config.filter_dice` is set.
    """

    from sonosynth.progress import progress_bar
    from sonosynth.seeds import sample_seeds

    config = config or GenerateConfig()
    prepare_output(out, overwrite, inputs=[run, source])  # fail before the slow part
    resolve_device(config.device)
    if config.filter_dice is not None and predictor is None:
        raise SonosynthError("--filter-dice needs a segmenter (--segmenter SEGRUN)")
    dataset = None if source is None else Dataset.open(source)
    if dataset is not None:
        config.attributes.validate(dataset.info, str(source))
    model, config = _load_model(run, config)
    joint = not model.conditioned_on_masks  # it makes its own mask (joint; an all-background one for lora)
    info, pairs = _source_pairs(dataset, model, config, f"{source}", f"{run}", progress)
    n = config.n if config.n is not None else len(pairs)
    side = max([model.size, *(max(p.shape) for p in pairs)]) if config.output_size == "source" else model.size
    require_space(Path(out), n * 3 * side * side, f"{n} pairs of up to {side} x {side} pixels")  # 16-bit image + mask
    rng = np.random.default_rng(config.seed)
    drawing = config if not config.hc_widen else replace(
        config, hc_widen=0.0, target_hc_mm=widened_hc_range([p.record for p in pairs], config.hc_widen, str(source)))
    masks = MaskSource(pairs, drawing, progress) if pairs else None
    rule = None if config.filter_dice is None else FidelityFilter(config.filter_dice, config.filter_mode)
    categorical = info.categorical_attributes
    max_draws = n if rule is None or rule.mode == "flag" else math.ceil(n * config.max_draws_factor)
    seeds = sample_seeds(config.seed, max_draws)
    out_info = _output_info(info, config, drawing, model, run, source, command)
    columns = _model_columns(model, run, config)
    kept = drawn = 0
    with DatasetWriter(out, out_info, overwrite=overwrite, inputs=[run, source]) as writer, \
            progress_bar(total=n, desc=f"generating ({config.mask_source} masks)", disable=not progress) as bar:
        while kept < n and drawn < max_draws:
            wanted = [config.attributes.draw(rng) for _ in range(min(config.batch_size, max_draws - drawn))]
            batch = [masks.draw(rng, w) if masks else _full_square(model.size) for w in wanted]
            batch_seeds = seeds[drawn : drawn + len(batch)]
            drawn += len(batch)
            rows = [{**(_categorical(c.base.record, categorical) if c.base else {}), **w}
                    for c, w in zip(batch, wanted, strict=True)]
            output = _sample(model, batch, rows, batch_seeds, config)
            written = [_at_output_size(c, output.images[i], None if output.masks is None else output.masks[i],
                                       config.output_size) for i, c in enumerate(batch)]
            # A segmenter always scores (recorded in `fidelity_dice`); only a threshold drops or flags. A joint
            # model's mask is scored against the segmenter's reading of its own image: how well it fits.
            scores = None if predictor is None else score_samples([w.image for w in written],
                                                                  [w.mask for w in written], predictor,
                                                                  info.num_labels)
            for i, (c, pair, attrs, seed) in enumerate(zip(batch, written, rows, batch_seeds, strict=True)):
                keep, flagged = True, False
                if rule is not None:
                    keep, flagged = rule.decide(scores[i])
                if not keep or kept >= n:
                    continue
                record = c.base.record if c.base else None
                attributes = _pair_attributes(c, attrs, config, info, joint)
                subject = "" if record is None else (record.subject or record.id)
                writer.add(
                    f"synth_{kept:05d}", pair.image, pair.mask,
                    subject=f"shape_{kept:05d}" if config.mask_source == "shape" else subject,
                    spacing_mm=pair.spacing_mm,
                    extra={
                        **columns, "seed": seed, "mask_source": config.mask_source,
                        "source_id": "" if record is None else record.id,
                        "mask_fallback": int(c.fell_back),
                        "target_hc_mm": "" if c.target_hc_mm is None else round(c.target_hc_mm, 3),
                        "fidelity_dice": "" if scores is None else round(scores[i], 4),
                        "flagged": "" if rule is None else int(flagged),
                        **({"anomaly": c.anomaly} if config.anomaly else {}),
                    },
                    **attributes,
                )
                kept += 1
                bar.update(1)
        if kept == 0:  # an empty dataset is of no use to any command: write nothing
            raise DataError(f"{out}: none of the {drawn} samples drawn passed the fidelity filter "
                            f"(Dice >= {config.filter_dice}); nothing was written")
        writer.info.provenance.update({"requested": n, "written": kept, "drawn": drawn})
    if kept < n and progress:
        print(f"warning: only {kept} of {n} samples passed the fidelity filter in {drawn} draws")
    return Path(out)


@dataclass
class WrittenPair:
    image: np.ndarray  # uint8
    mask: np.ndarray  # uint8
    spacing_mm: float | None


def _at_output_size(c: Candidate, square: np.ndarray, generated: np.ndarray | None, output_size: str) -> WrittenPair:
    """One generated (S, S) image in [0, 1] (and a joint model's (S, S) mask) at the requested output size.

    `cropped`: the candidate's reduced grid (the letterbox padding removed); `square`: the model's
    square; `source`: the source pair's own size and pixel size, black outside its field of view, with
    its real mask when the mask is the source's own (else the mask resized, nearest)."""
    import torch

    from sonosynth.data.transforms import unletterbox
    from sonosynth.synthesis.grid import crop_square, from_square, to_square

    size = square.shape[-1]
    mask = c.mask if generated is None else crop_square(generated, c.mask.shape)
    if output_size == "square":
        full = generated if generated is not None else to_square([c.mask], size)[0].numpy()
        return WrittenPair(from_square(square[None], [(size, size)])[0], np.asarray(full).astype(np.uint8),
                           c.spacing_mm)
    if output_size == "cropped" or c.base is None:
        return WrittenPair(from_square(square[None], [c.mask.shape])[0], np.asarray(mask).astype(np.uint8),
                           c.spacing_mm)
    base = c.base
    height, width = base.shape
    image = unletterbox(torch.from_numpy(np.ascontiguousarray(square, dtype=np.float32)), height, width).numpy()
    image = np.where(base.full_fov > 0, image, 0.0)
    if generated is None and c.mask is base.mask and base.full_mask is not None:
        full_mask = base.full_mask  # the real mask itself, not a resampled copy
    else:
        square_mask = to_square([np.asarray(mask)], size)[0]
        full_mask = unletterbox(square_mask, height, width, mode="nearest").round().numpy()
    spacing = None if c.spacing_mm is None else c.spacing_mm * c.mask.shape[1] / width
    return WrittenPair(unit_to_pixels(image), np.asarray(full_mask).astype(np.uint8), spacing)


def _full_square(size: int) -> Candidate:
    """What a joint model without a source dataset is conditioned on: the whole square in view."""
    return Candidate(np.zeros((size, size), np.uint8), np.ones((size, size), np.uint8), None, None)


def _check_joint_request(model: SynthesisModel, config: GenerateConfig) -> None:
    """A model that draws its own masks (joint, lora): requests that need a given mask are refused clearly."""
    if config.mask_source != "train":
        raise SonosynthError(f"{model.run}: a '{model.kind}' model draws its own masks; mask source "
                             f"'{config.mask_source}' needs a mask-conditioned model (spade, concat or controlnet): "
                             "pass --mask-source train")
    if (config.attributes.fixed or config.attributes.distribution) and not model.prompted:
        raise SonosynthError("--attr/--attr-dist need a mask-conditioned model; a joint model's pairs take the "
                             "classes of the source pairs")
    if config.filter_dice is not None:
        raise SonosynthError(f"--filter-dice needs a mask-conditioned model; a '{model.kind}' model's pairs are "
                             "scored (fidelity_dice) when --segmenter is given, and can be filtered afterwards")


def generate_from_sources(
    run: str | Path,
    source: str | Path,
    out: str | Path,
    counts: Mapping[str, int],
    config: GenerateConfig | None = None,
    progress: bool = True,
    predictor: Predictor | None = None,
    shape_hc_widen: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """One synthetic dataset from several mask sources, e.g. {'deform': 100, 'shape': 100}.

    Each source is generated with `config` (its mask source and n replaced; `shape_hc_widen`, the widening of
    the source's head-circumference range, for the shape source only) into a part folder that is kept until
    the merge is written, so an interrupted run redoes only missing parts. Ids are prefixed with the source
    name; the first part's dataset description is kept, and every part's provenance under `parts`.
    `predictor` scores (and with `filter_dice`, filters) every part.
    """
    config = config or GenerateConfig()
    out = prepare_output(out, overwrite, inputs=[run, source])
    parts = []
    for mask_source, n in counts.items():
        part = out.with_name(f"{out.name}-{mask_source}")
        if not (part / "manifest.csv").is_file():
            widen = shape_hc_widen if mask_source == "shape" else 0.0
            generate_dataset(run, source, part, replace(config, mask_source=mask_source, n=int(n), hc_widen=widen),
                             predictor=predictor, overwrite=True, progress=progress)
        parts.append((mask_source, Dataset.open(part)))
    info = parts[0][1].info
    info.provenance = {**info.provenance, "mask_sources": {k: int(v) for k, v in counts.items()},
                       "parts": {name: dataset.info.provenance for name, dataset in parts}}
    with DatasetWriter(out, info, overwrite=overwrite) as writer:
        for mask_source, dataset in parts:
            copy_pairs(writer, dataset, prefix=f"{mask_source}_")
    for _, dataset in parts:
        shutil.rmtree(dataset.root, ignore_errors=True)
    return out


def widened_hc_range(records: Sequence[Record], widen: float, where: str) -> tuple[float, float]:
    """The records' head-circumference range (their `hc_mm`) widened by `widen` at both ends."""
    values = [float(r.attributes[HC_ATTRIBUTE]) for r in records if r.attributes.get(HC_ATTRIBUTE)]
    if not values:
        raise DataError(f"{where}: widening the head-circumference range needs the {HC_ATTRIBUTE} attribute "
                        "on the source pairs")
    return min(values) * (1 - widen), max(values) * (1 + widen)


def _categorical(record: Record, categorical: Mapping[str, Sequence[str]]) -> dict[str, str]:
    return {k: v for k, v in record.attributes.items() if k in categorical and v in categorical[k]}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def mask_counts(value: str, n: int) -> dict[str, int]:
    """`--mask-source`: `deform,shape` with n=200 is {'deform': 100, 'shape': 100}; the first sources take any
    remainder (n=1: {'deform': 1})."""
    sources = [s.strip() for s in value.split(",") if s.strip()]
    if not sources or len(set(sources)) != len(sources):
        raise SonosynthError(f"--mask-source '{value}': expected one or more of train, deform, shape, each once")
    counts = {s: n // len(sources) + (i < n % len(sources)) for i, s in enumerate(sources)}
    return {s: c for s, c in counts.items() if c} or {sources[0]: n}


def generate_pairs(run: str | Path, source: str | Path, out: str | Path, mask_sources: str, n: int,
                   settings: dict[str, Any] | None = None, hc_widen: float | None = None,
                   size_widen: float | None = None, segmenter: str | Path | None = None, overwrite: bool = False
                   ) -> Path:
    """`sonosynth generate`: `n` pairs from one or several mask sources (`deform,shape`: split evenly, one dataset),
    shape masks widened as asked (neither widening given: the recommended recipe's), every pair scored by
    `segmenter` when given. `settings`: the other `GenerateConfig` fields."""
    from sonosynth.files import guard_output
    from sonosynth.synthesis.fidelity import segmenter_predictor
    from sonosynth.synthesis.masks import ShapeModelConfig

    settings = dict(settings or {})
    counts = mask_counts(mask_sources, n)
    if len(counts) > 1 and settings.get("target_hc_mm"):
        raise SonosynthError("--hc-mm sets the size of shape masks: use it with --mask-source shape alone")
    mixed = len(counts) > 1
    if hc_widen is None and size_widen is None and "shape" in counts and not settings.get("target_hc_mm"):
        hc_widen, size_widen = recommended_widening(Dataset.open(source))
    hc_widen, size_widen = hc_widen or 0.0, size_widen or 0.0
    config = GenerateConfig(**settings, n=n, mask_source=next(iter(counts)), hc_widen=0.0 if mixed else hc_widen,
                            shape=ShapeModelConfig(size_widen=size_widen)).checked()
    guard_output(out, [run, source, segmenter])  # the segmenter is read too
    if segmenter is None and config.filter_dice is not None:
        raise SonosynthError("--filter-dice needs --segmenter SEGRUN")
    predictor = None if segmenter is None else segmenter_predictor(segmenter, device=config.device)[0]
    if mixed:  # the shape part alone gets the widened head sizes
        return generate_from_sources(run, source, out, counts, config, predictor=predictor, shape_hc_widen=hc_widen,
                                     overwrite=overwrite)
    return generate_dataset(run, source, out, config, predictor=predictor, overwrite=overwrite)
