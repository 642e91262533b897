"""The downstream protocol's classification task (`evaluate downstream --task classify`; issue 38).

The same experiment as segmentation (`downstream.py`: cells of k x arm x seed, a generator per (k, seed) trained on
the k subjects only, the report resumable cell by cell), with a classifier in each cell instead of a segmenter:
- k counts training subjects **per class** (the class is a categorical attribute, e.g. BUSI `pathology`): each
  class's subjects in a seeded order, the first k of each, so k = 10 is inside k = 30 for a seed;
- each cell trains `classification.classifier` (early-stopped on the validation split's balanced accuracy) and
  keeps every test image's class probabilities;
- the report: balanced accuracy, macro AUC and per-class recall per arm (mean and sd over seeds), and each arm's
  paired difference against `real` and `real+classical` with a 95 % bootstrap interval resampling seeds and test
  images (balanced accuracy as a weighted mean of per-image correctness; AUC recomputed on each resample).
Synthetic images take their class from the same attribute, which a class-conditioned generator writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sonosynth.classification.classifier import (
    SCORE,
    ClassifierConfig,
    LabeledImages,
    evaluate,
    load_labeled,
    train_classifier,
)
from sonosynth.data.format import Dataset
from sonosynth.errors import SonosynthError
from sonosynth.evaluation.cells import CELLS_DIR, converged, uses_classical, uses_synthetic
from sonosynth.evaluation.report import write_results_csv
from sonosynth.evaluation.statistics import PairedDifference, paired_bootstrap
from sonosynth.files import write_json_atomic, write_text_atomic
from sonosynth.metrics import macro_auc

BASELINES = ("real", "real+classical")


def stratified_subjects(train: Dataset, attribute: str, classes: Sequence[str], k: str, seed: int) -> list[str]:
    """The first k subjects of each class in a seeded order (all of them for `all`); a subject's class is its
    first pair's. Nested: k = 10 is inside k = 30 for the same seed."""
    by_class: dict[str, list[str]] = {c: [] for c in classes}
    seen: set[str] = set()
    for record in sorted(train.records, key=lambda r: r.id):
        subject = record.subject or record.id
        if subject not in seen:
            seen.add(subject)
            by_class.setdefault(record.attributes.get(attribute, ""), []).append(subject)
    chosen = []
    for index, name in enumerate(classes):
        subjects = sorted(by_class.get(name, []))
        order = np.random.default_rng([seed, index]).permutation(len(subjects))
        if k != "all" and int(k) > len(subjects):
            raise SonosynthError(f"k={k} per class exceeds the {len(subjects)} training subjects of class {name!r}")
        chosen += [subjects[i] for i in order][: None if k == "all" else int(k)]
    return chosen


def classification_cell(config: ClassifierConfig, train: LabeledImages, val: LabeledImages,
                        synthetic: LabeledImages | None, test: LabeledImages, device: str) -> dict[str, Any]:
    """Train one cell's classifier and score it on every test image (its probabilities are kept)."""
    result = train_classifier(config, train, val, synthetic, progress=False, device=device)
    scores = evaluate(result.model, test, len(config.classes))
    return {
        "steps": result.steps, "best_step": result.best_step,
        "best_val_balanced_accuracy": result.best_val_balanced_accuracy, "max_steps": config.max_steps,
        "converged": converged(result.history, config.patience, SCORE),
        "val_curve": [[h["step"], h.get("val_balanced_accuracy")] for h in result.history],
        "metrics": {"balanced_accuracy": scores["balanced_accuracy"], "macro_auc": scores["macro_auc"],
                    **{f"recall_{c}": r for c, r in zip(config.classes, scores["recall"], strict=True)}},
        "per_image": [{"id": i, "label": int(y), "probabilities": [round(float(p), 5) for p in ps]}
                      for i, y, ps in zip(test.ids, test.labels, scores["probabilities"], strict=True)],
        "n_test_images": len(test), "n_synthetic_images": 0 if synthetic is None else len(synthetic),
    }


def subset(images: LabeledImages, index: Sequence[int]) -> LabeledImages:
    index = list(index)
    return LabeledImages(images.images[index], images.labels[index], [images.ids[i] for i in index])


# ---- statistics and the report -----------------------------------------------------------------------------


def outputs(cells: Sequence[dict[str, Any]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The test image ids all cells share, their labels and the (seeds, images, classes) probabilities."""
    ids = sorted(set.intersection(*({e["id"] for e in c["per_image"]} for c in cells)))
    rows = [{e["id"]: e for e in c["per_image"]} for c in cells]
    labels = np.array([rows[0][i]["label"] for i in ids])
    return ids, labels, np.array([[row[i]["probabilities"] for i in ids] for row in rows], dtype=np.float64)


def weighted_correct(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(seeds, images): each image's correctness weighted so that the mean over images is the balanced accuracy
    (weight N / (C x the image's class count), C the classes present)."""
    present, counts = np.unique(labels, return_counts=True)
    weight = len(labels) / (len(present) * counts[np.searchsorted(present, labels)])
    return (probabilities.argmax(-1) == labels[None]).astype(np.float64) * weight[None]


def auc_difference(arm: np.ndarray, base: np.ndarray, labels: np.ndarray, n_boot: int = 1000, seed: int = 0
                   ) -> PairedDifference:
    """Macro AUC of `arm` minus `base` ((seeds, images, classes) probabilities), averaged over seeds; the interval
    resamples seeds and test images (one draw of images for both arms) and recomputes the AUCs."""
    def mean_auc(probabilities: np.ndarray, seeds: np.ndarray, images: np.ndarray) -> float:
        values = [macro_auc(labels[images], probabilities[s][images]) for s in seeds]
        finite = [v for v in values if math.isfinite(v)]  # a resample with one class has no AUC
        return float(np.mean(finite)) if finite else math.nan

    every_seed, every_image = np.arange(arm.shape[0]), np.arange(arm.shape[1])
    point = mean_auc(arm, every_seed, every_image) - mean_auc(base, every_seed, every_image)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        seeds, images = rng.integers(0, arm.shape[0], arm.shape[0]), rng.integers(0, arm.shape[1], arm.shape[1])
        draws.append(mean_auc(arm, seeds, images) - mean_auc(base, seeds, images))
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return PairedDifference(point, float(low), float(high), arm.shape[0], arm.shape[1], True)


def result_rows(cells: Sequence[dict[str, Any]], classes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (k, arm): seeds, mean and sd over seeds of every metric, converged cells."""
    rows = []
    for (k, arm), group in _groups(cells).items():
        row: dict[str, Any] = {"k": k, "arm": arm, "seeds": len(group), "n_real_images": group[0]["n_real_images"],
                               "n_synthetic_images": group[0]["n_synthetic_images"]}
        for name in ("balanced_accuracy", "macro_auc", *(f"recall_{c}" for c in classes)):
            values = [c["metrics"][name] for c in group]
            row[f"{name}_mean"] = float(np.nanmean(values))
            row[f"{name}_std"] = float(np.nanstd(values, ddof=1)) if len(values) > 1 else math.nan
        row["converged"] = sum(bool(c["converged"]) for c in group)
        rows.append(row)
    return rows


def comparison_rows(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each arm against `real` and `real+classical` at the same k, paired by seed and test image."""
    groups, rows = _groups(cells), []
    for (k, arm), group in groups.items():
        for baseline in BASELINES:
            base = groups.get((k, baseline))
            if base is None or arm == baseline or arm == "real":
                continue
            seeds = sorted({c["seed"] for c in group} & {c["seed"] for c in base})
            if not seeds:
                continue
            mine = [next(c for c in group if c["seed"] == s) for s in seeds]
            theirs = [next(c for c in base if c["seed"] == s) for s in seeds]
            ids, labels, a = outputs(mine)
            _, _, b = outputs(theirs)
            accuracy = paired_bootstrap(weighted_correct(labels, a), weighted_correct(labels, b))
            for metric, difference in (("balanced accuracy (points)", accuracy),
                                       ("macro AUC (points)", auc_difference(a, b, labels))):
                rows.append({"k": k, "arm": arm, "vs": baseline, "metric": metric,
                             "difference": 100 * difference.mean, "low": 100 * difference.low,
                             "high": 100 * difference.high, "seeds": len(seeds), "images": len(ids),
                             "verdict": difference.verdict})
    return rows


def _groups(cells: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in sorted(cells, key=lambda c: (_k_order(c["k"]), c["arm"], c["seed"])):
        groups.setdefault((cell["k"], cell["arm"]), []).append(cell)
    return groups


def _k_order(k: str) -> float:
    return math.inf if k in ("all", "-") else float(k)


def restrict(cell: dict[str, Any], ids: set[str], classes: Sequence[str]) -> dict[str, Any]:
    """The cell as if it had been scored on the test images `ids` only (its metrics recomputed from the kept images'
    probabilities): how a selection split is cut out of finished cells (`evaluation.selection`)."""
    from sonosynth.metrics import balanced_accuracy, class_recalls

    kept = [e for e in cell["per_image"] if e["id"] in ids]
    labels = np.array([e["label"] for e in kept], dtype=int)
    probabilities = np.array([e["probabilities"] for e in kept], dtype=np.float64).reshape(len(kept), len(classes))
    predicted = probabilities.argmax(1)
    recalls = class_recalls(labels, predicted, len(classes))
    metrics = {"balanced_accuracy": balanced_accuracy(labels, predicted, len(classes)),
               "macro_auc": macro_auc(labels, probabilities),
               **{f"recall_{c}": r for c, r in zip(classes, recalls, strict=True)}}
    return {**cell, "per_image": kept, "n_test_images": len(kept), "metrics": metrics}


def write_classification_report(out: Path, cells: Sequence[dict[str, Any]], settings: dict[str, Any],
                                planned: int, command: str, selection: set[str] | None = None) -> None:
    """results.csv, comparisons.csv and results.md of a classification experiment; with `selection` (the selection
    split's test image ids) every table is on the other test images, and selection.md / selection.csv hold the
    comparisons on the selection split (for choosing, not for claims)."""
    classes = settings["classifier"]["classes"]
    if selection:
        on_selection = comparison_rows([restrict(c, selection, classes) for c in cells])
        write_results_csv(out / "selection.csv", on_selection)
        write_text_atomic(out / "selection.md", "# Selection split\n\n" + _comparisons_markdown(on_selection))
        others = {e["id"] for e in cells[0]["per_image"]} - selection
        cells = [restrict(c, others, classes) for c in cells]
    results, comparisons = result_rows(cells, classes), comparison_rows(cells)
    write_results_csv(out / "results.csv", results)
    write_results_csv(out / "comparisons.csv", comparisons)
    fmt: Callable[[float], str] = lambda v: "-" if not math.isfinite(v) else f"{v:.3f}"  # noqa: E731
    lines = [
        "# Downstream classification", "",
        f"Real data: `{settings['real']}`; class: `{settings['classifier']['attribute']}` ({', '.join(classes)}); "
        f"k = training subjects **per class**. Classifier: `{settings['classifier']['net']}` from scratch at "
        f"{settings['classifier']['size']} px, class-weighted cross-entropy, early-stopped on the validation split's "
        "balanced accuracy.",
        f"{len(cells)} of {planned} planned cells finished." + (f" Command: `{command}`" if command else ""), "",
        "| k (per class) | arm | seeds | real images | synthetic images | balanced accuracy | macro AUC | "
        + " | ".join(f"recall {c}" for c in classes) + " | converged |",
        "|---|---|---|---|---|---|---|" + "---|" * len(classes) + "---|",
    ]
    for row in results:
        recalls = " | ".join(fmt(row[f"recall_{c}_mean"]) for c in classes)
        lines.append(f"| {row['k']} | {row['arm']} | {row['seeds']} | {row['n_real_images']} | "
                     f"{row['n_synthetic_images']} | {fmt(row['balanced_accuracy_mean'])} | "
                     f"{fmt(row['macro_auc_mean'])} | {recalls} | {row['converged']}/{row['seeds']} |")
    if selection:
        lines += ["", f"**Selection split**: {len(selection)} test images of {100 * float(settings['selection']):g} % "
                  "of the test subjects are set aside for choosing (selection.md); every number here is on the "
                  "other test images."]
    lines += ["", "## Paired differences", "", _comparisons_markdown(comparisons)]
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")


def _comparisons_markdown(comparisons: Sequence[dict[str, Any]]) -> str:
    lines = ["Mean of (arm - baseline) over seeds x test images, paired per image at the same k and seed; 95 % "
             "bootstrap interval resampling seeds and test images. Verdict: the interval excludes zero (better / "
             "worse) or not (no detectable difference).", "",
             "| k | arm | vs | metric | difference [95 % CI] | seeds x images | verdict |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {row['k']} | {row['arm']} | {row['vs']} | {row['metric']} | {row['difference']:+.2f} "
              f"[{row['low']:+.2f}, {row['high']:+.2f}] | {row['seeds']} x {row['images']} | {row['verdict']} |"
              for row in comparisons]
    return "\n".join(lines) + "\n"


def run_classification_cells(todo: list[Any], out: Path, config: Any, real: Dataset, synthetic: Dataset | None,
                             splits: tuple[Dataset, Dataset, Dataset], store: Path, progress: bool, device: str,
                             record: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Train and score each classification cell of `todo` (`downstream.Cell`s), writing its record."""
    from sonosynth.evaluation.generators import ensure_generator, generator_folder
    from sonosynth.progress import progress_bar

    train, val, test = splits
    classifier: ClassifierConfig = config.classifier
    attribute, classes, size = classifier.attribute, classifier.classes, classifier.size
    pool, val_images, test_images = (load_labeled(part, attribute, classes, size) for part in (train, val, test))
    shared = None if synthetic is None else load_labeled(synthetic, attribute, classes, size)
    subject_of = [r.subject or r.id for r in train.records]
    for cell in progress_bar(todo, desc="classification cells", disable=not progress):
        chosen = stratified_subjects(train, attribute, classes, cell.k, cell.seed) if cell.k != "-" else []
        synthetic_images, generator = shared, None
        if config.generator is not None and uses_synthetic(cell.arm):
            folder = generator_folder(store, cell.k, cell.seed)
            made = ensure_generator(folder, train, chosen, config.generator, cell.seed, device, progress)
            synthetic_images = load_labeled(Dataset.open(made), attribute, classes, size)
            generator = {"folder": str(folder), "synthetic": str(made), "real_subjects": len(chosen)}
        wanted = set(chosen)
        index = [] if cell.arm == "synthetic" else [i for i, s in enumerate(subject_of) if s in wanted]
        settings = replace(classifier, seed=cell.seed,
                           classical=config.classical if uses_classical(cell.arm) else None)
        result = classification_cell(settings, subset(pool, index), val_images,
                                     synthetic_images if uses_synthetic(cell.arm) else None, test_images, device)
        result.update(k=cell.k, arm=cell.arm, seed=cell.seed, n_real_images=len(index),
                      n_real_subjects=len({subject_of[i] for i in index}), generator=generator)
        write_json_atomic(out / CELLS_DIR / f"{cell.name}.json", record(result))

