"""Self-training, the baseline of the unannotated-scans protocol: what a user would do with scans but no masks.

A cell with `--unannotated N` has, besides its k annotated subjects, the images of N more pool subjects (whose
masks the experiment never reads for training). The synthetic arms give those scans to the generator
(`generators.py`); the `real+pseudo-labels` arms instead train the cell's own segmenter on the k subjects (the
teacher: the same config and seed as the matching `real` or `real+classical` arm), label the scans with its
predictions and train again on the real pairs plus the pseudo-labelled ones, mixed as synthetic pairs are
(`synthetic_ratio`). One round, every prediction kept: the plain form of self-training.

The pseudo-labelled scans are written as a dataset folder, REPORT/pseudo-labels/<cell>/, so what the arm trained on
can be looked at, and a resumed report reuses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sonosynth.data.format import Dataset, DatasetWriter

PSEUDO_LABELS_DIR = "pseudo-labels"


def ensure_pseudo_labels(folder: Path, config: Any, real_pairs: Any, val_pairs: Any, scans: Dataset,
                         device: str, workdir: Path | None = None) -> Path:
    """folder: `scans` with the masks a segmenter trained by `config` on `real_pairs` predicts (made once)."""
    if (folder / "manifest.csv").is_file():
        return folder
    import torch

    from sonosynth.segmentation.predict import predict_masks
    from sonosynth.segmentation.train import train_segmenter

    teacher = train_segmenter(config, real_pairs, val_pairs, progress=False, device=device, workdir=workdir)
    samples = list(scans)
    with torch.no_grad():
        masks = predict_masks(teacher.segmenter(), [s.image for s in samples])
    with DatasetWriter(folder, scans.info, overwrite=True) as writer:
        for sample, mask in zip(samples, masks, strict=True):
            record = sample.record
            writer.add(record.id, sample.image, mask, subject=record.subject, spacing_mm=record.spacing_mm,
                       split="train")
    return folder
