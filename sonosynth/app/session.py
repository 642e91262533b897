"""What the browser app does, without the page: masks as pictures and back, generation, editing, review.

Everything here is plain numpy in, numpy out, so it is tested without a browser; `ui.py` only wires it
to Gradio components. Errors are `SonosynthError`s with one line for the page to show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sonosynth.data.format import Dataset, DatasetInfo
from sonosynth.data.validate import require_valid
from sonosynth.errors import SonosynthError

# Label colours: background black, then well-separated colours (Kelly / Tableau-like), one per label.
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


@dataclass(frozen=True)
class LabelStyle:
    """Each label's name and colour, in label order."""

    names: tuple[str, ...]

    @classmethod
    def for_labels(cls, num_labels: int, info: DatasetInfo | None = None) -> LabelStyle:
        if num_labels > len(PALETTE):
            raise SonosynthError(f"the app draws at most {len(PALETTE)} labels; the model has {num_labels}")
        labels = info.labels if info is not None else {}
        return cls(tuple(labels.get(str(k), "background" if k == 0 else f"label {k}") for k in range(num_labels)))

    @property
    def colours(self) -> list[tuple[int, int, int]]:
        return PALETTE[: len(self.names)]

    @property
    def hex_colours(self) -> list[str]:
        return ["#{:02x}{:02x}{:02x}".format(*c) for c in self.colours]


def mask_to_rgb(mask: np.ndarray, style: LabelStyle) -> np.ndarray:
    """A label map as an RGB picture in the labels' colours."""
    mask = np.asarray(mask)
    if mask.size and int(mask.max()) >= len(style.names):
        raise SonosynthError(f"the mask has label {int(mask.max())} but the model knows 0..{len(style.names) - 1} "
                             f"({', '.join(style.names)})")
    return np.asarray(style.colours, dtype=np.uint8)[mask.astype(np.int64)]


def rgb_to_mask(picture: np.ndarray, style: LabelStyle) -> np.ndarray:
    """A painted picture (H, W, 3 or 4) back to labels: each pixel's nearest label colour; transparent pixels
    are background. Antialiased brush edges fall to the nearer of the two colours."""
    picture = np.asarray(picture)
    if picture.ndim == 2:
        picture = np.repeat(picture[..., None], 3, axis=-1)
    rgb = picture[..., :3].astype(np.int32)
    distances = ((rgb[..., None, :] - np.asarray(style.colours, np.int32)) ** 2).sum(-1)
    mask = distances.argmin(-1).astype(np.uint8)
    if picture.shape[-1] == 4:
        mask[picture[..., 3] < 128] = 0
    return mask


def draw_ellipse(mask: np.ndarray, label: int, centre: tuple[float, float], axes: tuple[float, float],
                 angle_deg: float = 0.0) -> np.ndarray:
    """`mask` with a filled ellipse of `label` (centre (row, col) and semi-axes (rows, cols) in pixels)."""
    from skimage.draw import ellipse

    if min(axes) <= 0:
        raise SonosynthError("ellipse axes must be positive")
    out = np.array(mask, dtype=np.uint8, copy=True)
    rows, cols = ellipse(centre[0], centre[1], axes[0], axes[1], shape=out.shape, rotation=np.deg2rad(angle_deg))
    out[rows, cols] = label
    return out


def outline(image: np.ndarray, mask: np.ndarray, style: LabelStyle) -> np.ndarray:
    """The image in grey with each label's boundary drawn in its colour (for review grids)."""
    from skimage.segmentation import find_boundaries

    image = np.asarray(image)
    grey = image if image.dtype == np.uint8 else (image.astype(np.float64) / max(1, image.max()) * 255).astype(np.uint8)
    out = np.repeat(grey[..., None], 3, axis=-1)
    for label in range(1, len(style.names)):
        edge = find_boundaries(mask == label, mode="inner")
        out[edge] = style.colours[label]
    return out


@dataclass
class GeneratedPair:
    image: np.ndarray  # (S, S) uint8
    mask: np.ndarray  # (S, S) uint8: the conditioning mask (or a joint model's own)
    dice: float | None  # the segmenter's agreement with the mask, when a segmenter was given


class AppSession:
    """A loaded generator (and optionally its dataset and a segmenter) that the page's callbacks use."""

    def __init__(self, run: str | Path, dataset: str | Path | None = None, segmenter: str | Path | None = None,
                 device: str = "auto"):
        from sonosynth.synthesis.fidelity import segmenter_predictor
        from sonosynth.synthesis.sampling import load_synthesis_model

        self.run = str(run)
        self.model = load_synthesis_model(run, device=device)
        self.dataset = None if dataset is None else Dataset.open(dataset)
        if self.dataset is not None:
            require_valid(self.dataset, "pairs of --dataset")  # as `data check`: the page starts on valid data only
        info = None if self.dataset is None else self.dataset.info
        if info is not None and info.num_labels != self.model.num_labels:
            raise SonosynthError(f"{dataset}: {info.num_labels} labels but the model {run} has "
                                 f"{self.model.num_labels}")
        self.style = LabelStyle.for_labels(self.model.num_labels, info)
        self.predictor = None
        if segmenter is not None:
            self.predictor, labels = segmenter_predictor(segmenter, device=device)
            if labels != self.model.num_labels:
                raise SonosynthError(f"{segmenter}: a {labels}-label segmenter for a {self.model.num_labels}-label "
                                     "model")
        self._pairs: list[Any] | None = None
        self._masks: Any = None

    @property
    def size(self) -> int:
        return self.model.size

    @property
    def attributes(self) -> dict[str, list[str]]:
        return dict(self.model.class_values)

    # -- masks ---------------------------------------------------------------------------------------
    def source_pairs(self) -> list[Any]:
        """The dataset's pairs on the model's grid (its train split when split), read once."""
        from sonosynth.synthesis.generate import load_source_pairs

        if self.dataset is None:
            raise SonosynthError("no dataset was given (sonosynth app RUN --dataset DATASET)")
        if self._pairs is None:
            self._pairs = load_source_pairs(self.dataset.select("auto", what="pairs to take masks from"), self.size)
        return self._pairs

    def pair_ids(self) -> list[str]:
        return [p.record.id for p in self.source_pairs()]

    def dataset_mask(self, pair_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(mask, fov) of a dataset pair on the model's square grid."""
        pair = next((p for p in self.source_pairs() if p.record.id == pair_id), None)
        if pair is None:
            raise SonosynthError(f"no pair '{pair_id}' in {self.dataset.root}")
        return self.square(pair.mask), self.square(pair.fov)

    def default_fov(self) -> np.ndarray | None:
        """The field of view a hand-drawn mask gets: the dataset's (its first pair's fan), so a drawing is placed as
        dataset masks are; None (the whole square) without a dataset."""
        if self.dataset is None:
            return None
        pairs = self.source_pairs()
        return self.square(pairs[0].fov) if pairs else None

    def square(self, array: np.ndarray) -> np.ndarray:
        from sonosynth.synthesis.grid import to_square

        return to_square([array], self.size)[0].numpy().round().astype(np.uint8)

    def deform(self, mask: np.ndarray, seed: int) -> np.ndarray:
        """A random affine + elastic deformation of `mask` that keeps the anatomy rules (`--mask-source deform`)."""
        from sonosynth.synthesis.masks.deform import deform_mask

        self.check_mask(mask)
        if not np.asarray(mask).any():
            raise SonosynthError("draw or load a mask first: there is nothing to deform")
        return deform_mask(np.asarray(mask, np.uint8), np.random.default_rng(seed)).mask

    def anomaly(self, mask: np.ndarray, name: str, seed: int, label: int = 1) -> np.ndarray:
        """The mask's structure `label` made into the anomaly `name` (`--anomaly`; synthesis/masks/anomaly.py)."""
        from sonosynth.synthesis.masks.anomaly import make_anomaly

        self.check_mask(mask)
        return make_anomaly(np.asarray(mask, np.uint8), name, np.random.default_rng(seed), label)

    def new_shape(self, seed: int, attributes: Mapping[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """New anatomy from the dataset's shape model (`--mask-source shape`): (mask, fov) on the grid."""
        from sonosynth.synthesis.generate import GenerateConfig, MaskSource

        if self._masks is None:
            self._masks = MaskSource(self.source_pairs(), GenerateConfig(mask_source="shape", n=1))
        candidate = self._masks.draw(np.random.default_rng(seed), {k: v for k, v in (attributes or {}).items() if v})
        return self.square(candidate.mask), self.square(candidate.fov)

    def check_mask(self, mask: np.ndarray, where: str = "mask") -> None:
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise SonosynthError(f"{where}: expected a 2-D label map, got shape {mask.shape}")
        if mask.size and int(mask.max()) >= self.model.num_labels:
            raise SonosynthError(f"{where}: label {int(mask.max())} is not one the model knows "
                                 f"(0..{self.model.num_labels - 1}: {', '.join(self.style.names)})")

    # -- generation and editing --------------------------------------------------------------------------
    def generate(self, mask: np.ndarray | None, fov: np.ndarray | None = None,
                 attributes: Mapping[str, str] | None = None, steps: int = 25, guidance: float = 1.5, seed: int = 0,
                 prompt: str | None = None) -> GeneratedPair:
        """One image for `mask` (S, S) on the model's grid (a joint model ignores it and draws its own)."""
        import torch

        size = self.size
        fov = np.ones((size, size), np.uint8) if fov is None else np.asarray(fov, np.uint8)
        if self.model.conditioned_on_masks:
            if mask is None:
                raise SonosynthError("draw or load a mask first")
            self.check_mask(mask)
            if np.asarray(mask).shape != (size, size):
                raise SonosynthError(f"the mask is {np.asarray(mask).shape[1]}x{np.asarray(mask).shape[0]} px but the "
                                     f"model generates {size}x{size}")
        rows = [{k: v for k, v in (attributes or {}).items() if v}]
        self.model.steer(prompt or None)
        output = self.model.pipe(
            labels=torch.as_tensor(np.asarray(mask), dtype=torch.long)[None] if self.model.conditioned_on_masks
            else None,
            fov=torch.as_tensor(fov, dtype=torch.float32)[None, None],
            class_labels=self.model.class_tensor(rows),
            num_inference_steps=int(steps), guidance_scale=float(guidance),
            generator=[torch.Generator().manual_seed(int(seed))], output_type="np",
            prompt=prompt or None,
        )
        image = (output.images[0] * 255).round().astype(np.uint8)
        used = np.asarray(mask, np.uint8) if output.masks is None else np.asarray(output.masks[0], np.uint8)
        dice = None
        if self.predictor is not None:
            from sonosynth.synthesis.fidelity import score_samples

            dice = score_samples([image], [used], self.predictor, self.model.num_labels)[0]
        return GeneratedPair(image, used, dice)

    def edit(self, image: np.ndarray, mask: np.ndarray, edited: np.ndarray, steps: int = 50, seed: int = 0,
             jump_n_sample: int = 3, attributes: Mapping[str, str] | None = None) -> Any:
        """RePaint: regenerate `image` where `edited` differs from `mask` (`sonosynth edit`)."""
        from sonosynth.synthesis.edit import EditConfig, repaint

        image, mask, edited = np.asarray(image), np.asarray(mask), np.asarray(edited)
        if image.ndim == 3:
            image = image[..., :3].mean(axis=-1).round().astype(np.uint8)
        self.check_mask(mask, "mask")
        self.check_mask(edited, "edited mask")
        if not (image.shape == mask.shape == edited.shape):
            raise SonosynthError(f"image {image.shape[::-1]}, mask {mask.shape[::-1]} and edited mask "
                                 f"{edited.shape[::-1]} must be the same size")
        rows = [{k: v for k, v in (attributes or {}).items() if v}]
        config = EditConfig(steps=int(steps), jump_n_sample=int(jump_n_sample), seed=int(seed))
        return repaint(self.model, image, mask, edited, config, self.model.class_tensor(rows), where="edited mask")

    def dataset_pair(self, pair_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(image, mask) of a dataset pair at its own size (what editing starts from)."""
        if self.dataset is None:
            raise SonosynthError("no dataset was given (sonosynth app RUN --dataset DATASET)")
        sample = read_pair(self.dataset, pair_id)
        return np.asarray(sample.image), np.asarray(sample.mask)


# ---- review: a generated dataset, flagged pairs written back ------------------------------------------


SORTS = ("fidelity Dice, lowest first", "fidelity Dice, highest first", "id")


def review_rows(dataset: str | Path, sort: str = SORTS[0]) -> list[tuple[str, float | None, bool]]:
    """(id, fidelity Dice or None, flagged) of each pair, sorted; pairs without a Dice come last."""
    records = Dataset.open(dataset).records
    rows = []
    for r in records:
        value = r.extra.get("fidelity_dice", "")
        rows.append((r.id, float(value) if value not in ("", None) else None, r.extra.get("flagged", "") == "1"))
    if sort == SORTS[2] or all(row[1] is None for row in rows):  # no Dice to order by: by id
        return sorted(rows, key=lambda row: row[0])
    if sort not in SORTS:
        raise SonosynthError(f"sort must be one of {list(SORTS)}")
    sign = 1.0 if sort == SORTS[0] else -1.0
    return sorted(rows, key=lambda row: (row[1] is None, sign * (row[1] or 0.0), row[0]))


def read_pair(dataset: Dataset, pair_id: str) -> Any:
    """One pair's image and mask, read by id (only that pair's files are read)."""
    index = next((i for i, r in enumerate(dataset.records) if r.id == pair_id), None)
    if index is None:
        raise SonosynthError(f"no pair '{pair_id}' in {dataset.root}")
    return dataset[index]


def review_picture(dataset: Dataset, pair_id: str, style: LabelStyle) -> np.ndarray:
    sample = read_pair(dataset, pair_id)
    return outline(np.asarray(sample.image), np.asarray(sample.mask), style)


def set_flag(dataset: str | Path, pair_ids: Sequence[str], flagged: bool) -> None:
    """Write `flagged` = 1 for these pairs into the manifest (unflagging: 0 in a dataset whose fidelity filter marks
    every pair 0/1, else empty, as it was), atomically; nothing else changes."""
    from sonosynth.data.format import update_records

    opened = Dataset.open(dataset)
    wanted = set(pair_ids)
    missing = wanted - {r.id for r in opened.records}
    if missing:
        raise SonosynthError(f"{dataset}: no pairs {sorted(missing)}")
    unflagged = "0" if any(r.extra.get("flagged") == "0" for r in opened.records) else ""
    for record in opened.records:
        if record.id in wanted:
            record.extra["flagged"] = "1" if flagged else unflagged
    update_records(dataset, opened.records)
