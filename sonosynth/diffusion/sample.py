"""Sample a trained model over a dataset's masks and write the results as a new dataset.

Each output image i uses source mask i mod M and its own generator seeded with `seed + i`, so the
result does not depend on the batch size, and the same seed gives the same dataset (on the same
device). Masks are letterboxed to the model's square size and the fov is taken from the source
image; outputs are written either cropped back to the source size (`source`, the default: the pair
keeps the original mask and pixel spacing), at the model resolution without the letterbox
padding (`cropped`), or as the model's square (`square`). Pixels outside the fov are black.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sonosynth.data.format import Dataset, DatasetInfo, DatasetWriter, Record
from sonosynth.data.transforms import Letterbox, field_of_view, letterbox_mask, unletterbox
from sonosynth.devices import resolve_device
from sonosynth.errors import DataError, SonosynthError

OUTPUT_SIZES = ("source", "cropped", "square")
PROVENANCE_COLUMNS = ("model", "checkpoint_step", "scheduler", "steps", "guidance", "seed", "source_id")


@dataclass
class SampleConfig:
    """How `sonosynth sample` ran; saved in the output's dataset.json provenance."""

    run: str
    masks: str | None
    split: str = "train"
    n: int | None = None
    scheduler: str = "dpm++"
    steps: int = 25
    guidance: float = 1.5
    seed: int = 0
    batch_size: int = 8
    output_size: str = "source"
    device: str = "auto"


def training_step_of(run: Path, pipe: Any) -> str:
    """The step the model was saved at: from the pipeline, else the run's latest checkpoint name."""
    step = pipe.config.get("training_step")
    if step is not None:
        return str(step)
    names = [p.name for p in (run / "checkpoints").glob("step-*")]
    steps = [int(m.group(1)) for name in names if (m := re.fullmatch(r"step-(\d+)", name))]
    return str(max(steps)) if steps else ""


def class_attributes_of(run: Path, pipe: Any) -> list[str]:
    """Names of the model's class attributes (RUN/config.yaml's `class_attributes`)."""
    cardinalities = list(pipe.unet.model_config.class_cardinalities)
    if not cardinalities:
        return []
    config_yaml = run / "config.yaml"
    names: list[str] = []
    if config_yaml.is_file():
        import yaml

        try:
            names = [str(a) for a in (yaml.safe_load(config_yaml.read_text()) or {}).get("class_attributes") or []]
        except yaml.YAMLError as exc:
            raise SonosynthError(f"{config_yaml}: invalid YAML ({exc})") from None
    if len(names) != len(cardinalities):
        raise SonosynthError(
            f"{run}: the model has {len(cardinalities)} class attributes but config.yaml names {names}; "
            "pass the run folder (not its model/ folder)"
        )
    return names


def select_masks(masks: Dataset, split: str) -> Dataset:
    """`split` of the dataset (`all` for every pair); a dataset without splits is used whole for `train`."""
    if split == "all":
        return masks
    chosen = masks.subset(split=split)
    if not len(chosen) and split == "train" and not any(r.split for r in masks.records):
        return masks
    if not len(chosen):
        raise DataError(f"{masks.root}: no pairs in split '{split}' (use --split all)")
    return chosen


def sample_dataset(config: SampleConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
                   pipe: Any = None) -> Path:
    """Generate `config.n` pairs and write them to `out` (atomically) with provenance columns.

    `pipe`: the pipeline of `config.run` when the caller has already loaded it (it is not loaded again).
    """
    from tqdm.auto import tqdm

    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.diffusion.schedulers import make_scheduler, scheduler_name

    if config.output_size not in OUTPUT_SIZES:
        raise SonosynthError(f"--output-size must be one of {', '.join(OUTPUT_SIZES)}, got '{config.output_size}'")
    if config.steps < 1 or config.batch_size < 1:
        raise SonosynthError("--steps and --batch-size must be at least 1")
    device = resolve_device(config.device)
    run = Path(config.run)
    if pipe is None:
        pipe = MaskToUltrasoundPipeline.from_pretrained(run)
    pipe.scheduler = make_scheduler(config.scheduler, config=pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    model_cfg = pipe.unet.model_config
    size = pipe.config.get("sample_size")
    if not size:
        raise SonosynthError(f"{run}: the saved model does not record its image size (sample_size)")
    size = int(size)
    class_names = class_attributes_of(run, pipe)

    if config.masks is None:
        if model_cfg.kind != "joint":
            raise SonosynthError(f"a '{model_cfg.kind}' model needs --masks DATASET to generate from")
        if not config.n:
            raise SonosynthError("without --masks, pass --n (number of pairs to generate)")
        sources: Dataset | None = None
        info = DatasetInfo(
            name="synthetic",
            labels={str(k): ("background" if k == 0 else f"label_{k}") for k in range(model_cfg.num_labels)},
        )
    else:
        sources = select_masks(Dataset.open(config.masks), config.split)
        info = sources.info
        if info.num_labels > model_cfg.num_labels:
            raise DataError(
                f"{sources.root}: masks have {info.num_labels} labels, the model was trained for {model_cfg.num_labels}"
            )
    total = config.n if config.n is not None else len(sources)  # type: ignore[arg-type]
    if total < 1:
        raise SonosynthError("--n must be at least 1")

    provenance = {
        "stage": "sample",
        **asdict(config),
        "run": str(run.resolve()),
        "checkpoint_step": training_step_of(run, pipe),
        "kind": model_cfg.kind,
        "model_size": model_cfg.size,
        "image_size": size,
    }
    out_info = DatasetInfo(
        name=f"{info.name}-synthetic",
        labels=dict(info.labels),
        modality=info.modality,
        attributes=dict(info.attributes),
        source=f"sonosynth sample of {run.resolve()}",
        license=info.license,
        description=f"Synthetic pairs from a '{model_cfg.kind}' model ({config.scheduler}, {config.steps} steps).",
        provenance=provenance,
    )
    columns = {
        "model": str(run.resolve()),
        "checkpoint_step": provenance["checkpoint_step"],
        "scheduler": scheduler_name(pipe.scheduler),
        "steps": config.steps,
        "guidance": config.guidance,
    }
    cache: dict[int, Any] = {}
    with DatasetWriter(out, out_info, overwrite=overwrite) as writer:
        bar = tqdm(total=total, desc="sampling", unit="img", disable=not progress)
        for start in range(0, total, config.batch_size):
            indices = list(range(start, min(start + config.batch_size, total)))
            items = [_source_item(sources, i, size, cache, model_cfg.fov_channel) for i in indices]
            labels = None if model_cfg.kind == "joint" else torch.stack([it["label"] for it in items])
            fov = torch.stack([it["fov"] for it in items]) if sources is not None else None
            class_labels = _class_tensor(items, class_names, info) if class_names else None
            result = pipe(
                labels=labels,
                fov=fov,
                class_labels=class_labels,
                num_inference_steps=config.steps,
                guidance_scale=config.guidance,
                generator=[torch.Generator().manual_seed(config.seed + i) for i in indices],
                output_type="pt",
                num_images=len(indices),
                size=size,
            )
            for j, i in enumerate(indices):
                image = result.images[j, 0]
                mask = result.masks[j] if result.masks is not None else None
                _write_pair(writer, items[j], i, image, mask, config, columns)
            bar.update(len(indices))
        bar.close()
    return Path(out)


def _source_item(sources: Dataset | None, i: int, size: int, cache: dict[int, Any], use_fov: bool) -> dict[str, Any]:
    """The letterboxed mask and fov of source pair i mod M (decoded once per source)."""
    if sources is None:
        return {"record": None, "height": size, "width": size, "fov": torch.ones(1, size, size)}
    k = i % len(sources)
    if k not in cache:
        sample = sources[k]
        mask = sample.mask
        fov_source = field_of_view(sample.image) if use_fov else np.ones(mask.shape, dtype=bool)
        cache[k] = {
            "record": sample.record,
            "height": mask.shape[0],
            "width": mask.shape[1],
            "mask": mask,
            "fov_source": fov_source,
            "label": letterbox_mask(mask, size),
            "fov": letterbox_mask(fov_source.astype(np.uint8), size)[None].float(),
        }
    return cache[k]


def _class_tensor(items: list[dict[str, Any]], names: list[str], info: DatasetInfo) -> torch.Tensor:
    values = info.categorical_attributes
    out = torch.full((len(items), len(names)), -1, dtype=torch.long)
    for row, item in enumerate(items):
        record: Record | None = item["record"]
        for col, name in enumerate(names):
            allowed = values.get(name, [])
            value = record.attributes.get(name, "") if record is not None else ""
            if value in allowed:
                out[row, col] = allowed.index(value)
    return out


def _write_pair(
    writer: DatasetWriter,
    item: dict[str, Any],
    i: int,
    image: torch.Tensor,
    mask: torch.Tensor | None,
    config: SampleConfig,
    columns: dict[str, Any],
) -> None:
    """Crop/resize one generated (S, S) image (and joint mask) to the chosen output size and add it."""
    record: Record | None = item["record"]
    height, width = item["height"], item["width"]
    size = image.shape[-1]
    box = Letterbox(height, width, size)
    scale = 1.0
    if config.output_size == "source" and record is not None:
        image = unletterbox(image, height, width)
        if mask is None:
            mask_np = item["mask"]
        else:
            mask_np = unletterbox(mask.float(), height, width, mode="nearest").round().long().numpy()
        image = torch.where(torch.as_tensor(item["fov_source"]), image, torch.full_like(image, -1.0))
    else:
        label = item.get("label") if mask is None else mask
        assert label is not None
        if config.output_size == "cropped" and record is not None:
            (top, left), (h, w) = box.offset, box.inner
            image, label = image[top : top + h, left : left + w], label[top : top + h, left : left + w]
        mask_np = label.numpy()
        scale = box.scale if record is not None else 1.0
    pixels = np.clip(np.rint((image.numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)
    source_id = record.id if record is not None else ""
    spacing = None if record is None or record.spacing_mm is None else record.spacing_mm / scale
    attributes = dict(record.attributes) if record is not None else {}
    attributes = {k: v for k, v in attributes.items() if v != ""}
    writer.add(
        f"syn_{i:06d}",
        pixels,
        np.asarray(mask_np).astype(np.uint8),
        subject=(record.subject or record.id) if record is not None else "",
        split=record.split if record is not None else "",
        spacing_mm=spacing,
        source=source_id or f"sample {i}",
        extra={**columns, "seed": config.seed + i, "source_id": source_id},
        **attributes,
    )
