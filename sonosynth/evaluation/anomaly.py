"""Anomalies without abnormal data (`sonosynth evaluate anomaly`; issue 38, FetalFlex's central claim).

Can a detector of an abnormal class (BUSI `malignant`) be trained when no abnormal image is available, from
abnormal-looking images the product makes itself? For each k (training subjects per class) and seed:
- a generator per cell (`generators.py`, the same recipe and store as the downstream protocol) is trained on the
  k subjects of the **negative** class only (e.g. `benign`); its new masks, made from theirs, are edited into the
  named anomaly (`GenerateConfig.anomaly`, e.g. `spiculated+taller-than-wide`: the clinical descriptors of
  malignancy, `synthesis/masks/anomaly.py`), and the images it draws under them are the **simulated** positives;
- arm `simulated`: a classifier (`classification.classifier`) trained on the k real negatives plus the simulated
  positives, early-stopped on the validation split's real negatives plus a held-out share of simulated positives
  (so no real positive image is used for anything but the test);
- arm `one-class`: the same generator as a detector that never saw a positive, simulated or real: its denoising
  error (`diffusion/novelty.py`, reconstruction-error anomaly detection);
- arm `real-positive`: the reference a few real cases would give, the same classifier on k real negatives and k
  real positives, validated on the real validation split.
All arms are scored on the test split's negatives and positives: ROC AUC of positive vs negative per cell, and the
paired difference of `simulated` against each other arm with a 95 % bootstrap interval resampling seeds and test
images (`classify.auc_difference`). Cells are saved one by one (REPORT/cells), so the experiment resumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sonosynth.classification.classifier import ClassifierConfig, LabeledImages, load_labeled
from sonosynth.data.format import Dataset
from sonosynth.errors import SonosynthError
from sonosynth.evaluation.cells import CELLS_DIR, Cell
from sonosynth.evaluation.classify import auc_difference, classification_cell, outputs, stratified_subjects, subset
from sonosynth.evaluation.generators import GENERATORS_DIR, GeneratorRecipe, ensure_generator, generator_folder
from sonosynth.files import atomic_path, guard_output, read_json_object, write_json_atomic, write_text_atomic
from sonosynth.segmentation.common import image_to_model
from sonosynth.settings import Config

ANOMALY_ARMS = ("one-class", "simulated", "real-positive")


@dataclass
class AnomalyConfig(Config):
    what: ClassVar[str] = "anomaly experiment"

    attribute: str = "pathology"
    negative: str = "benign"  # the class every arm and the generator see
    positive: str = "malignant"  # seen only by the real-positive arm (and the test)
    ks: list[str] = field(default_factory=lambda: ["10"])
    seeds: int = 3
    anomaly: str = "spiculated+taller-than-wide"
    generator: GeneratorRecipe = field(default_factory=GeneratorRecipe)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    validation_share: float = 0.2  # of the simulated positives: the simulated arm's validation positives
    timesteps: list[int] = field(default_factory=lambda: [100, 250, 500])  # the one-class score's noise levels
    auto_split: bool = False

    def __post_init__(self) -> None:
        from sonosynth.synthesis.masks.anomaly import parse_anomaly

        if isinstance(self.generator, dict):
            self.generator = GeneratorRecipe.from_dict(self.generator)
        if isinstance(self.classifier, dict):
            self.classifier = ClassifierConfig.from_dict(self.classifier)
        parse_anomaly(self.anomaly)
        problems = []
        if self.negative == self.positive:
            problems.append(f"the negative and positive classes must differ, both are {self.negative!r}")
        if any(k == "all" or not k.isdigit() or int(k) < 1 for k in self.ks):
            problems.append(f"each k must be a positive number of subjects per class, got {self.ks}")
        if not 0 < self.validation_share < 1:
            problems.append("validation_share must lie in (0, 1)")
        if self.seeds < 1:
            problems.append("seeds must be at least 1")
        if problems:
            raise SonosynthError("anomaly experiment: " + "; ".join(problems))

    @property
    def classes(self) -> list[str]:
        return [self.negative, self.positive]

    def recipe(self) -> GeneratorRecipe:
        """The generator recipe with its samples' masks edited into the anomaly."""
        return replace(self.generator, generate=replace(self.generator.generate, anomaly=self.anomaly))


def run_anomaly(real_path: str | Path, out: str | Path, config: AnomalyConfig, command: str = "",
                progress: bool = True, device: str = "cpu") -> Path:
    """Run (or resume) every missing cell, then write results.md, results.csv, comparisons.csv and samples.png."""
    from sonosynth.data.validate import require_valid
    from sonosynth.evaluation.downstream import training_pool
    from sonosynth.progress import progress_bar
    from sonosynth.version import code_version

    code_version()
    out = guard_output(out, [real_path])
    real = Dataset.open(real_path)
    require_valid(real, "real pairs")
    categorical = real.info.categorical_attributes
    missing = [c for c in config.classes if c not in categorical.get(config.attribute, [])]
    if missing:
        raise SonosynthError(f"{real.root}: attribute {config.attribute!r} has no class {', '.join(missing)} "
                             f"({categorical.get(config.attribute, 'not a categorical attribute')})")
    train, val, test = training_pool(real, auto_split=config.auto_split)
    for k in config.ks:  # too few subjects fails before any work
        stratified_subjects(train, config.attribute, config.classes, k, 0)
    classifier = replace(config.classifier, attribute=config.attribute, classes=config.classes)
    settings = {"real_manifest": str(Path(real_path).resolve()), **config.to_dict(), "classifier": classifier.to_dict()}
    _check_or_write(out / "settings.json", settings)
    keep = [config.negative, config.positive]
    test, val = (part.subset(ids=[r.id for r in part.records if r.attributes.get(config.attribute) in keep])
                 for part in (test, val))
    test_images, val_images = (load_labeled(part, config.attribute, config.classes, classifier.size)
                               for part in (test, val))
    cells = [Cell(k, arm, seed) for seed in range(config.seeds) for k in config.ks for arm in ANOMALY_ARMS]
    (out / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    for cell in progress_bar([c for c in cells if not (out / CELLS_DIR / f"{c.name}.json").is_file()],
                             desc="anomaly cells", disable=not progress):
        record = _run_cell(cell, config, classifier, train, val_images, test, test_images, out, device, progress)
        write_json_atomic(out / CELLS_DIR / f"{cell.name}.json", {**record, "code": code_version()})
    paths = [out / CELLS_DIR / f"{c.name}.json" for c in cells]
    finished = [read_json_object(p, "cell record") for p in paths if p.is_file()]
    write_anomaly_report(out, finished, config, len(cells), command, real)
    return out


def _run_cell(cell: Cell, config: AnomalyConfig, classifier: ClassifierConfig, train: Dataset, val: LabeledImages,
              test: Dataset, test_images: LabeledImages, out: Path, device: str, progress: bool) -> dict[str, Any]:
    negatives = stratified_subjects(train, config.attribute, [config.negative], cell.k, cell.seed)
    real_negatives = _images_of(train, negatives, 0, classifier.size)
    folder = generator_folder(out / GENERATORS_DIR, cell.k, cell.seed)
    simulated = Dataset.open(ensure_generator(folder, train, negatives, config.recipe(), cell.seed, device, progress))
    base = {**{"k": cell.k, "arm": cell.arm, "seed": cell.seed}, "n_real_negative_images": len(real_negatives),
            "generator": {"folder": str(folder.relative_to(out)), "synthetic": str(simulated.root.relative_to(out))}}
    if cell.arm == "one-class":
        from sonosynth.diffusion.novelty import denoising_error

        error = denoising_error(folder / "run", [s.image for s in test], config.timesteps, seed=cell.seed)
        ranks = (np.argsort(np.argsort(error)) + 0.5) / max(1, len(error))  # AUC needs only the order
        labels = test_images.labels.numpy()
        from sonosynth.metrics import macro_auc

        probabilities = np.stack([1 - ranks, ranks], axis=1)
        return {**base, "n_positive_images": 0, "converged": None,  # nothing trained here
                "metrics": {"auc": macro_auc(labels, probabilities)},
                "per_image": [{"id": i, "label": int(y), "probabilities": [round(float(p), 5) for p in ps],
                               "denoising_error": float(e)}
                              for i, y, ps, e in zip(test_images.ids, labels, probabilities, error, strict=True)]}
    settings = replace(classifier, seed=cell.seed)
    if cell.arm == "simulated":
        positives = _labeled_as(simulated, 1, classifier.size)
        held = max(1, round(config.validation_share * len(positives)))
        training = _joined(real_negatives, subset(positives, range(held, len(positives))))
        validation = _joined(subset(val, np.flatnonzero(val.labels.numpy() == 0)), subset(positives, range(held)))
        n_positive, source = len(positives) - held, "simulated"
    else:
        real_positives = _images_of(train, stratified_subjects(train, config.attribute, [config.positive], cell.k,
                                                               cell.seed), 1, classifier.size)
        training, validation = _joined(real_negatives, real_positives), val
        n_positive, source = len(real_positives), "real"
    result = classification_cell(settings, training, validation, None, test_images, device)
    result["metrics"] = {"auc": result["metrics"]["macro_auc"], **result["metrics"]}
    return {**base, **result, "n_positive_images": n_positive, "positives": source}


def _images_of(train: Dataset, subjects: list[str], label: int, size: int) -> LabeledImages:
    chosen = set(subjects)
    return _labeled_as(train.subset(ids=[r.id for r in train.records if (r.subject or r.id) in chosen]), label, size)


def _labeled_as(dataset: Dataset, label: int, size: int) -> LabeledImages:
    """Every image of `dataset` with class index `label` (simulated positives carry their source's class)."""
    import torch

    samples = list(dataset)
    images = [image_to_model(s.image, size) for s in samples]
    return LabeledImages(torch.stack(images) if images else torch.zeros(0, 1, size, size),
                         torch.full((len(samples),), label, dtype=torch.long), [s.record.id for s in samples])


def _joined(a: LabeledImages, b: LabeledImages) -> LabeledImages:
    import torch

    return LabeledImages(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), [*a.ids, *b.ids])


def _check_or_write(path: Path, settings: dict[str, Any]) -> None:
    import json

    current = json.loads(json.dumps(settings))
    if path.is_file():
        previous = read_json_object(path, "report settings")
        changed = sorted(k for k in {*previous, *current} if previous.get(k) != current.get(k) and k != "real_manifest")
        if changed:
            raise SonosynthError(f"{path}: this report was started with different settings ({', '.join(changed)}); "
                                 "use a new --out to run with the new ones")
        return
    write_json_atomic(path, current)


# ---- the report ------------------------------------------------------------------------------------------------


def anomaly_rows(cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per k and arm: AUC mean and sd over seeds; the paired AUC differences of `simulated` against the others)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in sorted(cells, key=lambda c: (int(c["k"]), c["seed"])):
        groups.setdefault((cell["k"], cell["arm"]), []).append(cell)
    results = []
    for (k, arm), group in sorted(groups.items(), key=lambda kv: (int(kv[0][0]), ANOMALY_ARMS.index(kv[0][1]))):
        aucs = [c["metrics"]["auc"] for c in group]
        results.append({"k": k, "arm": arm, "seeds": len(group), "auc_mean": float(np.mean(aucs)),
                        "auc_std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else math.nan,
                        "positives": group[0].get("n_positive_images", 0),
                        "converged": None if arm == "one-class" else sum(bool(c.get("converged")) for c in group)})
    comparisons = []
    for (k, arm), group in groups.items():
        if arm != "simulated":
            continue
        for other in ("one-class", "real-positive"):
            base = {c["seed"]: c for c in groups.get((k, other), [])}
            mine = [c for c in group if c["seed"] in base]
            if not mine:
                continue
            ids, labels, a = outputs(mine)
            _, _, b = outputs([base[c["seed"]] for c in mine])
            diff = auc_difference(a, b, labels)
            comparisons.append({"k": k, "arm": "simulated", "vs": other, "metric": "AUC (points)",
                                "difference": 100 * diff.mean, "low": 100 * diff.low, "high": 100 * diff.high,
                                "seeds": len(mine), "images": len(ids), "verdict": diff.verdict})
    return results, comparisons


def write_anomaly_report(out: Path, cells: list[dict[str, Any]], config: AnomalyConfig, planned: int, command: str,
                         real: Dataset) -> None:
    """results.md, results.csv, comparisons.csv and samples.png (simulated positives beside real ones)."""
    from sonosynth.evaluation.report import sample_grid_png, write_results_csv

    results, comparisons = anomaly_rows(cells)
    write_results_csv(out / "results.csv", results)
    write_results_csv(out / "comparisons.csv", comparisons)
    fmt = lambda v: "-" if not math.isfinite(v) else f"{v:.3f}"  # noqa: E731
    lines = [
        "# Anomalies without abnormal data", "",
        f"Real data: `{real.root}`; negative class `{config.attribute}={config.negative}`, positive "
        f"`{config.positive}`; k = training subjects per class. The generator of each (k, seed) is trained on the k "
        f"negatives only and its masks edited into `{config.anomaly}`; `simulated` trains a classifier on the k real "
        "negatives plus those images as positives (validated on real validation negatives and held-out simulated "
        "positives), `one-class` scores the generator's denoising error (it never saw a positive), `real-positive` "
        "trains the classifier with k real positives. Test: the test split's negatives and positives.",
        f"{len(cells)} of {planned} planned cells finished." + (f" Command: `{command}`" if command else ""), "",
        "| k (per class) | arm | seeds | positives trained on | AUC | converged |", "|---|---|---|---|---|---|",
    ]
    converged = lambda r: "-" if r["converged"] is None else f"{r['converged']}/{r['seeds']}"  # noqa: E731
    lines += [f"| {r['k']} | {r['arm']} | {r['seeds']} | {r['positives']} | {fmt(r['auc_mean'])} ± "
              f"{fmt(r['auc_std'])} | {converged(r)} |" for r in results]
    unconverged = [c for c in cells if c.get("converged") is False]
    if unconverged:
        lines += ["", f"**{len(unconverged)} of the trained classifiers did not converge** (still improving at their "
                  "step cap): " + ", ".join(f"k={c['k']} {c['arm']} seed {c['seed']}" for c in unconverged)
                  + "; their rows are not results."]
    lines += ["", "Paired differences of AUC (simulated - other), 95 % bootstrap interval over seeds and test images:",
              "", "| k | vs | difference [95 % CI] | seeds x images | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r['k']} | {r['vs']} | {r['difference']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] | "
              f"{r['seeds']} x {r['images']} | {r['verdict']} |" for r in comparisons]
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")
    simulated = [c for c in cells if c["arm"] == "simulated"]
    if simulated:
        made = Dataset.open(out / simulated[0]["generator"]["synthetic"])
        positives = real.subset(ids=[r.id for r in real.records if r.split == "test"
                                     and r.attributes.get(config.attribute) == config.positive])
        picture = sample_grid_png([(f"simulated {config.positive}", made),
                                   (f"real {config.positive} (test)", positives)])
        with atomic_path(out / "samples.png") as tmp:
            tmp.write_bytes(picture)
