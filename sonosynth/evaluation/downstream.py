"""The downstream experiment: does adding synthetic pairs help a segmenter when real data is scarce?

For each k (real training subjects, nested: a seeded permutation of the training subjects, first k)
and each arm, a segmenter is trained and scored on the real test split in the original pixel grid.
Arms: `real`; `real+classical` (strong classical augmentation, the baseline a user would pick
instead); `real+synthetic`; `real+synthetic+classical`; `synthetic` (no real training pair).
Each (k, arm, seed) is a cell saved as REPORT/cells/<cell>.json the moment it finishes, so an
interrupted run resumes where it stopped.

Where the synthetic pairs come from:
- generator per k (`DownstreamConfig.generator`, the honest scarce-data protocol and the default of
  `sonosynth evaluate downstream --generator-per-k RECIPE`): for every (k, seed) a diffusion model
  is trained on exactly the k subjects of the real arm and its new masks come from their masks only
  (`generators.py`); the synthetic-only arm is then run per k too. `generators` (`--generators DIR`)
  lets the reports of an ablation share those trained generators (the same subjects for the same k and
  seed), each report sampling them its own way;
- one given synthetic dataset (`synthetic_path`) for every k: its generator saw whatever it was
  trained on, in general more real data than the segmenter, and every report says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sonosynth.augment import AugmentConfig
from sonosynth.classification.classifier import ClassifierConfig
from sonosynth.data.conditions import Condition
from sonosynth.data.format import MANIFEST_CSV, Dataset, sha256_of
from sonosynth.data.validate import require_separate, require_valid
from sonosynth.devices import resolve_device
from sonosynth.errors import SonosynthError
from sonosynth.evaluation.cells import (
    ARMS,
    CELLS_DIR,
    PSEUDO_LABEL_ARMS,
    Cell,
    converged,
    real_arm,
    uses_classical,
    uses_pseudo_labels,
    uses_synthetic,
)
from sonosynth.evaluation.generators import (
    GENERATORS_DIR,
    GeneratorRecipe,
    ensure_generator,
    generator_folder,
)
from sonosynth.evaluation.pseudo_labels import PSEUDO_LABELS_DIR, ensure_pseudo_labels
from sonosynth.evaluation.selection import selection_ids
from sonosynth.files import guard_output, read_json_object, write_json_atomic
from sonosynth.segmentation.common import SegmentationConfig
from sonosynth.settings import Config, without_new_defaults
from sonosynth.version import code_version

NNUNET_DIR = "nnunet"  # nnU-Net's raw / preprocessed / results folders of each cell (--net nnunet)
SEGMENTERS_DIR = "segmenters"  # each U-Net cell's trained segmenter (safetensors), to look at its failures
SETTINGS_FILE = "settings.json"
TASKS = ("segment", "classify")


@dataclass
class DownstreamConfig(Config):
    what: ClassVar[str] = "downstream experiment"

    ks: list[str] = field(default_factory=lambda: ["5", "10", "20", "all"])
    seeds: int = 3
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    head_circumference: bool | None = None  # None: on when label 1 is named 'head'
    generator: GeneratorRecipe | None = None  # set: a generator per (k, seed), trained on those subjects only
    generators: str | None = None  # the generator store; None: REPORT/generators
    classical: AugmentConfig = field(default_factory=lambda: AugmentConfig.preset("classical"))  # *+classical arms
    structures: dict[str, list[int]] = field(default_factory=dict)  # empty: each foreground label alone
    # A designed distribution shift: only training and validation pairs meeting this condition (e.g. `hc_mm<150`,
    # `view=2CH`; `sonosynth.data.conditions`), the test split whole. Empty: every pair.
    train_where: str = ""
    # A real dataset without splits is refused unless this accepts an automatic subject-wise split (recorded).
    auto_split: bool = False
    # This fraction of the test subjects is the selection split (`evaluation.selection`): its comparisons are for
    # choosing levers and defaults, and the report's results are on the remaining test subjects only. 0: none.
    selection: float = 0.0
    # segment: a segmenter per cell (`segmentation`); classify: a classifier per cell (`classifier`, whose class is a
    # categorical attribute; k then counts training subjects per class; `evaluation.classify`).
    task: str = "segment"
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    # Scans without masks: each cell also has the images of this many more pool subjects ("all": every other one;
    # empty: none), which its generator learns appearance from and the `real+pseudo-labels` arms self-train on.
    unannotated: str = ""

    def validate(self, has_synthetic: bool) -> None:
        if self.task not in TASKS:
            raise SonosynthError(f"--task {self.task}: one of {', '.join(TASKS)}")
        if self.task == "classify" and self.train_where:
            raise SonosynthError("--train-where is for --task segment (not yet for classify)")
        unknown = [a for a in self.arms if a not in (*ARMS, *PSEUDO_LABEL_ARMS)]
        if unknown:
            raise SonosynthError(f"unknown arms {unknown} (choose from {', '.join((*ARMS, *PSEUDO_LABEL_ARMS))})")
        self._validate_unannotated()
        if self.generators and self.generator is None:
            raise SonosynthError("--generators DIR holds per-k generators: it needs --generator-per-k RECIPE")
        if has_synthetic and self.generator is not None:
            raise SonosynthError("give either --synthetic SYNTH or --generator-per-k RECIPE, not both")
        if not (has_synthetic or self.generator is not None) and any(uses_synthetic(a) for a in self.arms):
            raise SonosynthError(
                "arms with synthetic data need --generator-per-k RECIPE or --synthetic SYNTH "
                "(or use --arms real,real+classical)"
            )
        for k in self.ks:
            if k != "all" and (not k.isdigit() or int(k) < 1):
                raise SonosynthError(f"--k {k}: each k must be a positive integer or 'all'")
        if self.seeds < 1:
            raise SonosynthError("--seeds must be at least 1")
        if self.train_where:
            Condition.parse(self.train_where)
        if not 0 <= self.selection < 1:
            raise SonosynthError(f"--selection {self.selection}: a fraction of the test subjects in [0, 1)")
        if self.task == "segment" and self.segmentation.net != "unet" and any(uses_classical(a) for a in self.arms):
            raise SonosynthError(f"the +classical arms are for --net unet: drop them with --net {self.segmentation.net}"
                                 " (nnU-Net brings its own augmentation)")


    def _validate_unannotated(self) -> None:
        if not self.unannotated:
            if any(uses_pseudo_labels(a) for a in self.arms):
                raise SonosynthError("the pseudo-labels arms self-train on unannotated scans: give --unannotated N")
            return
        if self.unannotated != "all" and (not self.unannotated.isdigit() or int(self.unannotated) < 1):
            raise SonosynthError(f"--unannotated {self.unannotated}: a positive number of subjects or 'all'")
        if self.task != "segment":
            raise SonosynthError("--unannotated is for --task segment")
        if "all" in self.ks:
            raise SonosynthError("--unannotated needs pool subjects beyond k: drop k 'all'")


def parse_ks(text: str) -> list[str]:
    return [k.strip().lower() for k in text.split(",") if k.strip()]


def plan_cells(config: DownstreamConfig) -> list[Cell]:
    """All cells, seed-major so a partial run already has every arm for the first seeds.

    With one shared synthetic dataset the synthetic-only arm does not depend on k (one cell per
    seed); with a generator per k it does (one per k and seed).
    """
    per_k = config.generator is not None
    cells = []
    for seed in range(config.seeds):
        for k in config.ks:
            cells.extend(Cell(k, arm, seed) for arm in config.arms if arm != "synthetic" or per_k)
        if "synthetic" in config.arms and not per_k:
            cells.append(Cell("-", "synthetic", seed))
    return cells


def training_pool(real: Dataset, train_where: str = "", auto_split: bool = False
                  ) -> tuple[Dataset, Dataset, Dataset]:
    """(train, val, test) of the experiment: with `train_where`, train and val keep only the pairs meeting it."""
    from sonosynth.segmentation.train import real_splits

    train, val, test = real_splits(real, seed=0, auto_split=auto_split)
    if train_where:
        condition = Condition.parse(train_where)
        train, val = condition.keep(train, "training"), condition.keep(val, "validation")
    return train, val, test


def nested_subjects(subjects: list[str], k: str, seed: int) -> list[str]:
    """The first k subjects of a seeded permutation: k=5 is inside k=10 for the same seed."""
    order = np.random.default_rng(seed).permutation(len(subjects))
    ordered = [sorted(subjects)[i] for i in order]
    if k == "all":
        return ordered
    if int(k) > len(ordered):
        raise SonosynthError(f"k={k} exceeds the {len(ordered)} training subjects of the real dataset")
    return ordered[: int(k)]


def unannotated_subjects(subjects: list[str], k: str, seed: int, count: str) -> list[str]:
    """The subjects whose scans a cell has without masks: the next `count` ("all": every remaining one) of the same
    seeded permutation whose first k are the annotated ones, so they never overlap."""
    ordered = nested_subjects(subjects, "all", seed)
    rest = ordered[int(k):]
    if count != "all" and int(count) > len(rest):
        raise SonosynthError(f"--unannotated {count}: only {len(rest)} pool subjects remain beyond k={k}")
    return rest if count == "all" else rest[: int(count)]


def parse_arms(text: str, has_synthetic: bool, net: str, unannotated: bool = False) -> list[str]:
    """`--arms`: comma separated names; `auto` is every arm the data allows (no synthetic arms without synthetic
    data, the pseudo-labels arms with unannotated scans), the +classical arms only for the U-Net (nnU-Net and SAM
    bring their own augmentation)."""
    if text != "auto":
        return [a.strip() for a in text.split(",") if a.strip()]
    arms = [*ARMS, *(PSEUDO_LABEL_ARMS if unannotated else ())]
    return [a for a in arms if (has_synthetic or not uses_synthetic(a)) and not (net != "unet" and uses_classical(a))]


def downstream_config(real: str | Path, segmentation: SegmentationConfig, *, k: str = "5,10,20,all", seeds: int = 3,
                      arms: str = "auto", has_synthetic: bool = False, generator_per_k: str | Path | None = None,
                      generators: str | Path | None = None, classical_config: str | Path | None = None,
                      structure: list[str] | None = None, head_circumference: bool | None = None,
                      train_where: str = "", auto_split: bool = False, selection: float = 0.0, task: str = "segment",
                      label_attribute: str = "pathology", classifier_net: str = "small", unannotated: str = ""
                      ) -> DownstreamConfig:
    """The experiment `evaluate downstream` describes in options (files named by path are read here), checked. With
    `task` classify, the classifier takes the segmenter's training settings (size, steps, learning rate,
    validation, patience, synthetic ratio) and classifies by `label_attribute` with `classifier_net`."""
    from sonosynth.metrics import parse_structures

    recipe = None if generator_per_k is None else GeneratorRecipe.from_yaml(generator_per_k)
    return DownstreamConfig(
        ks=parse_ks(k),
        seeds=seeds,
        arms=parse_arms(arms, has_synthetic or recipe is not None, segmentation.net, bool(unannotated)),
        segmentation=segmentation,
        head_circumference=head_circumference,
        generator=recipe,
        generators=None if generators is None else str(generators),
        classical=AugmentConfig.preset_file("classical", classical_config),
        structures=parse_structures(structure, Dataset.open(real).info.num_labels) if structure else {},
        train_where=train_where,
        auto_split=auto_split,
        selection=selection,
        task=task,
        unannotated=unannotated,
        classifier=ClassifierConfig(
            attribute=label_attribute, net=classifier_net, size=segmentation.size, max_steps=segmentation.max_steps,
            learning_rate=segmentation.learning_rate, val_every=segmentation.val_every,
            patience=segmentation.patience, min_steps=segmentation.min_steps,
            synthetic_ratio=segmentation.synthetic_ratio),
    ).checked()


def uses_head_circumference(dataset: Dataset, flag: bool | None) -> bool:
    return flag if flag is not None else dataset.info.labels.get("1", "").lower() == "head"


def run_downstream(
    real_path: str | Path,
    out: str | Path,
    config: DownstreamConfig,
    synthetic_path: str | Path | None = None,
    command: str = "",
    progress: bool = True,
    device: str = "cpu",
    report_only: bool = False,
    only_seeds: list[int] | None = None,
    workers: int = 1,
    write_report: bool = True,
) -> Path:
    """Run (or resume) every missing cell, then write results.csv, results.md, the plot and report.html.

    `report_only`: train nothing; write the report of the cells finished so far (e.g. while another
    process is still running the experiment), saying how many of the planned cells it holds.
    `only_seeds`: run only the missing cells of these seeds now (add seeds to a report whose earlier seeds'
    generators are gone, or share seeds among machines); the report still covers every finished cell.
    `workers`: run the missing cells' seeds in this many processes at once, the cores shared among them
    (`evaluation.workers`; 0: one process per core); `write_report`: False in those processes.
    """
    from sonosynth.evaluation.report import write_downstream_report
    from sonosynth.metrics import label_structures
    from sonosynth.segmentation.train import check_compatible_labels

    code_version()  # the code as this run starts, not as it is when a cell ends hours later (cached)
    out = guard_output(out, [real_path, synthetic_path])  # the report (and generator store) hold no input
    if config.generators:
        guard_output(config.generators, [real_path, synthetic_path])
    if report_only and not (out / SETTINGS_FILE).is_file():
        raise SonosynthError(f"{out}: no experiment to report here (no {SETTINGS_FILE}); --report-only writes "
                             "the report of an experiment's finished cells")
    config.validate(synthetic_path is not None)
    beyond = sorted(set(only_seeds or []) - set(range(config.seeds)))
    if beyond:
        raise SonosynthError(f"--only-seeds {beyond[0]}: the plan has seeds 0..{config.seeds - 1} (raise --seeds)")
    resolve_device(device)
    real = Dataset.open(real_path)
    synthetic = Dataset.open(synthetic_path) if synthetic_path is not None else None
    require_valid(real, "real pairs")  # before the report folder exists
    if synthetic is not None:
        require_valid(synthetic, "synthetic pairs")
        check_compatible_labels(real, synthetic)
    train, val, test = training_pool(real, config.train_where, config.auto_split)
    if synthetic is not None:
        require_separate(Dataset(real.root, real.info, [*val.records, *test.records]), synthetic, "synthetic pairs")
    if len(test) == 0:
        raise SonosynthError(f"{real.root}: no test split to evaluate on (run `sonosynth data split`)")
    call = {"real_path": real_path, "out": out, "config": config, "synthetic_path": synthetic_path,
            "command": command, "device": device}  # what a worker process reruns on its seeds
    if config.task == "classify":
        return _run_classification(real_path, out, config, synthetic_path, real, synthetic, (train, val, test),
                                   command, progress, device, report_only, only_seeds, write_report,
                                   (call, workers))
    segmentation = replace(config.segmentation, labels=dict(real.info.labels))
    segmentation.validate()
    head_label = 1 if uses_head_circumference(real, config.head_circumference) else None
    structures = config.structures or label_structures(real.info.num_labels)
    for k in config.ks:  # a k beyond the training subjects fails before any work
        nested_subjects(train.subjects, k, 0)
        if config.unannotated:
            unannotated_subjects(train.subjects, k, 0, config.unannotated)

    cells_dir = out / CELLS_DIR
    cells_dir.mkdir(parents=True, exist_ok=True)
    settings = _report_settings(real_path, synthetic_path, real, synthetic, config, segmentation, structures,
                                head_label)
    _check_or_write_settings(out / SETTINGS_FILE, settings)

    store = Path(config.generators) if config.generators else out / GENERATORS_DIR
    cells = plan_cells(config)
    todo = [c for c in cells if not (cells_dir / f"{c.name}.json").is_file()
            and (only_seeds is None or c.seed in only_seeds)]
    if not report_only:
        _dispatch(todo, len(cells), cells_dir, call, workers, progress,
                  lambda: _run_cells(todo, out, store, config, segmentation, real, synthetic, (train, val, test),
                                     structures, head_label, progress, device))
    if not write_report:
        return out

    finished = [read_json_object(path, "cell record")
                for c in cells if (path := cells_dir / f"{c.name}.json").is_file()]
    if not finished:
        raise SonosynthError(f"{out}: no finished cell to report yet")
    write_downstream_report(out, finished, real, synthetic, {**settings, "planned_cells": len(cells)},
                            command=command,
                            selection=selection_ids(test.records, config.selection) if config.selection else None)
    return out


def _dispatch(todo: list[Cell], planned: int, cells_dir: Path, call: dict[str, Any], workers: int, progress: bool,
              run_here: Any) -> None:
    """Run the missing cells `todo`: here (`run_here()`), or with `workers` > 1 (0: one per core) their seeds in
    worker processes that each rerun `run_downstream(**call)` on theirs (`evaluation.workers`)."""
    from sonosynth.evaluation.workers import core_budget, run_seed_groups, seed_groups, threads_per_worker

    seeds = sorted({c.seed for c in todo})
    processes = min(workers or core_budget(), len(seeds))
    if processes > 1:
        run_seed_groups(run_downstream, seed_groups(seeds, processes), call, cells_dir, planned,
                        threads_per_worker(processes), progress)
    elif todo:
        run_here()


def _run_classification(real_path: str | Path, out: Path, config: DownstreamConfig, synthetic_path: str | Path | None,
                        real: Dataset, synthetic: Dataset | None, splits: tuple[Dataset, Dataset, Dataset],
                        command: str, progress: bool, device: str, report_only: bool, only_seeds: list[int] | None,
                        write_report: bool, parallel: tuple[dict[str, Any], int]) -> Path:
    """`run_downstream` with a classifier per cell (`evaluation.classify`): the same plan, store, resuming and
    worker processes (`parallel`: a worker's call and the number of workers)."""
    from sonosynth.classification.classifier import with_dataset_classes
    from sonosynth.evaluation.classify import (
        run_classification_cells,
        stratified_subjects,
        write_classification_report,
    )

    config = replace(config, classifier=with_dataset_classes(config.classifier, real))
    classifier = config.classifier
    for k in config.ks:  # a k beyond a class's training subjects fails before any work
        stratified_subjects(splits[0], classifier.attribute, classifier.classes, k, 0)
    (out / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    settings = {
        "task": "classify", "real": str(Path(real_path).resolve()),
        "synthetic": None if synthetic_path is None else str(Path(synthetic_path).resolve()),
        "real_manifest_sha256": sha256_of(real.root / MANIFEST_CSV),
        **({"synthetic_manifest_sha256": sha256_of(synthetic.root / MANIFEST_CSV)} if synthetic is not None else {}),
        "generator_per_k": None if config.generator is None else config.generator.to_dict(),
        **({"generators": str(Path(config.generators).resolve())} if config.generators else {}),
        **({"auto_split": True} if config.auto_split else {}),
        **({"selection": config.selection} if config.selection else {}),
        "classifier": classifier.to_dict(), "classical": config.classical.to_dict(),
    }
    _check_or_write_settings(out / SETTINGS_FILE, settings)
    store = Path(config.generators) if config.generators else out / GENERATORS_DIR
    cells = plan_cells(config)
    todo = [c for c in cells if not (out / CELLS_DIR / f"{c.name}.json").is_file()
            and (only_seeds is None or c.seed in only_seeds)]
    if not report_only:
        _dispatch(todo, len(cells), out / CELLS_DIR, *parallel, progress,
                  lambda: run_classification_cells(todo, out, config, real, synthetic, splits, store, progress, device,
                                                   record=lambda r: {**r, "code": code_version()}))
    if not write_report:
        return out
    finished = [read_json_object(path, "cell record")
                for c in cells if (path := out / CELLS_DIR / f"{c.name}.json").is_file()]
    if not finished:
        raise SonosynthError(f"{out}: no finished cell to report yet")
    write_classification_report(out, finished, settings, len(cells), command,
                                selection=selection_ids(splits[2].records, config.selection) if config.selection
                                else None)
    return out


def _report_settings(real_path: str | Path, synthetic_path: str | Path | None, real: Dataset,
                     synthetic: Dataset | None, config: DownstreamConfig, segmentation: SegmentationConfig,
                     structures: dict[str, list[int]], head_label: int | None) -> dict[str, Any]:
    """settings.json: what the report's cells were made with (a resumed report must match it)."""
    return {
        "real": str(Path(real_path).resolve()),
        "synthetic": None if synthetic_path is None else str(Path(synthetic_path).resolve()),
        "real_manifest_sha256": sha256_of(real.root / MANIFEST_CSV),
        **({"synthetic_manifest_sha256": sha256_of(synthetic.root / MANIFEST_CSV)} if synthetic is not None else {}),
        "generator_per_k": None if config.generator is None else config.generator.to_dict(),
        **({"generators": str(Path(config.generators).resolve())} if config.generators else {}),
        **({"train_where": config.train_where} if config.train_where else {}),
        **({"auto_split": True} if config.auto_split else {}),
        **({"selection": config.selection} if config.selection else {}),
        **({"unannotated": config.unannotated} if config.unannotated else {}),
        "segmentation": asdict(segmentation),
        "classical": config.classical.to_dict(),
        "structures": structures,
        "head_circumference": head_label is not None,
    }


def _run_cells(todo: list[Cell], out: Path, store: Path, config: DownstreamConfig, segmentation: SegmentationConfig,
               real: Dataset, synthetic: Dataset | None, splits: tuple[Dataset, Dataset, Dataset],
               structures: dict[str, list[int]], head_label: int | None, progress: bool, device: str) -> None:
    """Train and score each cell of `todo` (k-major, so a generator's pairs load once), writing its record."""
    import torch

    from sonosynth.progress import progress_bar
    from sonosynth.segmentation.common import PairTensors, load_pairs

    train, val, test = splits
    cells_dir = out / CELLS_DIR
    val_pairs = load_pairs(val, segmentation.size, progress)
    shared_synthetic = load_pairs(synthetic, segmentation.size, progress) if synthetic is not None else None
    test_samples = list(test)
    subject_of = [r.subject or r.id for r in train.records]
    train_pairs = load_pairs(train, segmentation.size, progress)
    loaded: dict[Path, Any] = {}  # the synthetic pairs of the current generator (cells are k-major)
    for cell in progress_bar(todo, desc="downstream cells", disable=not progress):
        chosen = nested_subjects(train.subjects, cell.k, cell.seed) if cell.k != "-" else []
        scans = _unannotated_scans(train, cell, config.unannotated)
        synth_pairs, generator = shared_synthetic, None
        if config.generator is not None and uses_synthetic(cell.arm):
            folder = generator_folder(store, cell.k, cell.seed, config.unannotated)
            synth_dir = ensure_generator(folder, train, chosen, config.generator, cell.seed, device, progress, scans)
            if synth_dir not in loaded:
                loaded = {synth_dir: load_pairs(Dataset.open(synth_dir), segmentation.size, progress)}
            synth_pairs = loaded[synth_dir]
            generator = {"folder": _relative(folder, out), "synthetic": _relative(synth_dir, out),
                         "real_subjects": len(chosen)}
            if scans is not None:
                generator["unannotated_subjects"] = len(scans.subjects)
        real_index = [] if cell.arm == "synthetic" else [i for i, s in enumerate(subject_of) if s in set(chosen)]
        cell_config = replace(segmentation, seed=cell.seed,
                              classical=config.classical if uses_classical(cell.arm) else None)
        extra, pseudo = synth_pairs if uses_synthetic(cell.arm) else None, None
        if uses_pseudo_labels(cell.arm):  # the teacher is the matching real arm's segmenter (same config and seed)
            teacher = Cell(cell.k, real_arm(cell.arm), cell.seed)
            pseudo = ensure_pseudo_labels(out / PSEUDO_LABELS_DIR / teacher.name, cell_config,
                                          train_pairs.select(real_index), val_pairs, scans, device,
                                          workdir=out / NNUNET_DIR / f"{teacher.name}-teacher")
            labelled = load_pairs(Dataset.open(pseudo), segmentation.size, progress)
            extra = labelled if extra is None else PairTensors(torch.cat([extra.images, labelled.images]),
                                                               torch.cat([extra.labels, labelled.labels]))
        record = _run_cell(cell, cell_config, train_pairs.select(real_index), val_pairs, extra, test_samples,
                           real.info.num_labels, structures, head_label, device, workdir=out / NNUNET_DIR / cell.name,
                           keep=out / SEGMENTERS_DIR / cell.name)
        record.update(
            n_real_subjects=len({subject_of[i] for i in real_index}),
            n_real_images=len(real_index),
            generator=generator,
            code=code_version(),
        )
        if pseudo is not None:
            record.update(n_synthetic_images=0 if synth_pairs is None or not uses_synthetic(cell.arm)
                          else len(synth_pairs), n_pseudo_labelled_images=len(labelled),
                          pseudo_labels=_relative(pseudo, out))
        write_json_atomic(cells_dir / f"{cell.name}.json", record)


def _unannotated_scans(train: Dataset, cell: Cell, count: str) -> Dataset | None:
    """The cell's scans without masks (`--unannotated`): the pool pairs of its unannotated subjects, whose masks
    only the evaluation's own code holds (the generator gets their image files, self-training their images)."""
    if not count or cell.k == "-":
        return None
    chosen = set(unannotated_subjects(train.subjects, cell.k, cell.seed, count))
    return train.subset(ids=[r.id for r in train.records if (r.subject or r.id) in chosen])


def _run_cell(
    cell: Cell,
    config: SegmentationConfig,
    real_pairs: Any,
    val_pairs: Any,
    synth_pairs: Any | None,
    test_samples: list[Any],
    num_labels: int,
    structures: dict[str, list[int]],
    head_label: int | None,
    device: str,
    workdir: Path | None = None,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Train one cell's segmenter and score it on every test image (per-image scores are kept); a U-Net is also
    saved to `keep` (a few MB), so its failures can be looked at later (`benchmarks/worst_images.py`)."""
    import torch

    from sonosynth.metrics import score_pair, summarize
    from sonosynth.segmentation.predict import predict_masks
    from sonosynth.segmentation.train import train_segmenter

    result = train_segmenter(config, real_pairs, val_pairs, synth_pairs, progress=False, device=device,
                             workdir=workdir if config.net == "nnunet" else None)
    segmenter = result.segmenter()
    if keep is not None and config.net == "unet":
        from sonosynth.segmentation.common import save_segmenter

        save_segmenter(keep, result, overwrite=True)
    references = [s.mask for s in test_samples] if config.net == "sam" and config.sam_box == "reference" else None
    with torch.no_grad():
        predictions = predict_masks(segmenter, [s.image for s in test_samples], references=references)
    scores = [
        score_pair(pred, s.mask, num_labels, s.record.spacing_mm, head_label, structures)
        for pred, s in zip(predictions, test_samples, strict=True)
    ]
    metrics = result.metrics()
    return {
        **asdict(cell),
        "n_synthetic_images": 0 if synth_pairs is None else len(synth_pairs),
        "n_test_images": len(test_samples),
        "hd95_unit": "mm" if all(s.record.spacing_mm for s in test_samples) else "px",
        **{k: v for k, v in metrics.items() if k != "history"},
        "max_steps": config.max_steps,
        "converged": converged(metrics["history"], config.patience),
        "val_curve": [[h["step"], h.get("val_dice")] for h in metrics["history"]],
        "metrics": summarize(scores),
        "per_image": [
            {"id": s.id, "dice": sc.dice, "hd95": sc.hd95, "hc_abs_error_mm": sc.hc_abs_error_mm,
             "in_truth": sc.in_truth, "in_pred": sc.in_pred}
            for s, sc in zip(test_samples, scores, strict=True)
        ],
    }


def _relative(path: Path, report: Path) -> str:
    """A path inside the report relative to it (the report moves as a whole), any other one absolute."""
    return str(path.relative_to(report)) if path.is_relative_to(report) else str(path.resolve())


# Where the data lay when the report began: a location, not a setting. A report (or its committed cells) resumes
# wherever the same data is now; the data itself is compared by its manifest's hash where the report recorded it.
LOCATIONS = ("real", "synthetic", "generators")


def _check_or_write_settings(path: Path, settings: dict[str, Any]) -> None:
    """Resuming is only honest with the same data and training settings; refuse otherwise."""
    if path.is_file():
        previous = {k: v for k, v in read_json_object(path, "report settings").items() if k not in LOCATIONS}
        if isinstance(previous.get("generator_per_k"), dict):  # a flat recipe of the previous release
            previous["generator_per_k"] = GeneratorRecipe.from_dict(previous["generator_per_k"], str(path)).to_dict()
        current = {k: v for k, v in json.loads(json.dumps(settings)).items() if k not in LOCATIONS}
        for key in ("real_manifest_sha256", "synthetic_manifest_sha256"):  # reports before these: not recorded
            if key not in previous:
                current.pop(key, None)
        # a setting added since the report began, at its default, is how that report ran
        defaults = {"segmentation": asdict(SegmentationConfig()), "generator_per_k": GeneratorRecipe().to_dict()}
        for key, default in defaults.items():
            if isinstance(current.get(key), dict) and isinstance(previous.get(key), dict):
                current[key] = without_new_defaults(current[key], previous[key], json.loads(json.dumps(default)))
        if previous != current:
            changed = sorted(k for k in current if previous.get(k) != current.get(k))
            raise SonosynthError(
                f"{path}: this report was started with different settings ({', '.join(changed)}); "
                "use a new --out to run with the new ones"
            )
        return
    write_json_atomic(path, settings)


def is_missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
