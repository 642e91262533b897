"""Several datasets as one (`sonosynth data merge`): e.g. every ultrasound image a user has, to pretrain a
generator that is then fine-tuned on a few scans of the target anatomy (`sonosynth train --init`).

Ids and subjects are prefixed with their dataset's name, so subjects of different datasets never merge (a
subject-wise split stays subject-wise); splits and pixel sizes are kept, and each pair records its dataset in
the `dataset` column. A categorical attribute stays one (with the union of its values) only when every dataset
declares it, as a pair must have a declared value; otherwise it becomes a plain column. Datasets with other
label sets merge only with `foreground`: every structure becomes label 1 (one label set a mask-conditioned
generator can learn across anatomies).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sonosynth.data.format import Dataset, DatasetInfo, DatasetWriter
from sonosynth.errors import DataError


def merge_datasets(
    sources: Sequence[str | Path],
    out: str | Path,
    name: str | None = None,
    foreground: str | None = None,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Dataset:
    """Write the pairs of `sources` (only those in `splits`, when given) into a new dataset at `out`."""
    if len(sources) < 2:
        raise DataError("merge needs at least two datasets")
    datasets = [Dataset.open(source) for source in sources]
    names = [d.info.name for d in datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{datasets[names.index(repeated[0])].root}: another dataset has the same name "
                        f"'{repeated[0]}' (ids are prefixed by the name, so they must differ)")
    if splits is not None:
        datasets = [d.subset(split=list(splits)) for d in datasets]
        empty = [d.root for d in datasets if not len(d)]
        if empty:
            raise DataError(f"{empty[0]}: no pairs in splits {list(splits)}")
    info = _merged_info(datasets, Path(out).name if name is None else name, foreground)
    with DatasetWriter(out, info, overwrite=overwrite, inputs=sources) as writer:
        for dataset in datasets:
            prefix = f"{dataset.info.name}_"
            for sample in dataset:
                r = sample.record
                mask = (sample.mask > 0).astype(np.uint8) if foreground else sample.mask
                kept = {k: v for k, v in r.attributes.items() if k in info.attributes}
                demoted = {k: v for k, v in r.attributes.items() if k not in info.attributes}
                writer.add(f"{prefix}{r.id}", sample.image, mask, subject=prefix + (r.subject or r.id),
                           split=r.split, spacing_mm=r.spacing_mm, source=str(dataset.path_of(r)),
                           extra={**r.extra, **demoted, "dataset": dataset.info.name}, **kept)
    return Dataset.open(out)


def _merged_info(datasets: Sequence[Dataset], name: str, foreground: str | None) -> DatasetInfo:
    first = datasets[0].info
    if foreground:
        labels = {"0": "background", "1": foreground}
    else:
        for dataset in datasets[1:]:
            if dataset.info.labels != first.labels:
                raise DataError(f"{dataset.root}: its labels {dataset.info.labels} differ from {datasets[0].root}'s "
                                f"{first.labels}; merge with --foreground NAME (every structure as one label)")
        labels = dict(first.labels)
    attributes: dict[str, list[str] | None] = {}
    everywhere = set.intersection(*(set(d.info.categorical_attributes) for d in datasets))
    for dataset in datasets:
        for key, values in dataset.info.attributes.items():
            if key in attributes and (attributes[key] is None) != (values is None):
                raise DataError(f"{dataset.root}: attribute '{key}' is categorical in one dataset and free-form "
                                "in another")
            if values is None:
                attributes[key] = None
            elif key in everywhere:
                known = attributes.get(key) or []
                attributes[key] = known + [v for v in values if v not in known]
    return DatasetInfo(
        name=name,
        labels=labels,
        modality=", ".join(dict.fromkeys(d.info.modality for d in datasets)),
        organ=", ".join(dict.fromkeys(d.info.organ for d in datasets if d.info.organ)),
        attributes=attributes,
        source="; ".join(f"{d.info.name}: {d.info.source}" for d in datasets if d.info.source),
        license="; ".join(f"{d.info.name}: {d.info.license}" for d in datasets if d.info.license),
        description=f"merged from {', '.join(d.info.name for d in datasets)}"
        + (f"; every structure is label 1 ({foreground})" if foreground else ""),
        provenance={"merged": [{"dataset": d.info.name, "path": str(d.root), "pairs": len(d)} for d in datasets]},
    )
