"""Region editing (`sonosynth edit`): change the anatomy of a real image where the mask was edited.

The RePaint strategy (Lugmayr et al. 2022, as used by FetalFlex): the model is conditioned on the
EDITED mask; at every denoising step the region outside the edit is replaced by the real image
forward-noised to that step, so only the edit (the pixels where the masks differ, dilated by a
margin) is generated and it must agree with its real surroundings. Resampling jumps (re-noise a
few steps, denoise again) let the generated part and the real part harmonise. Outside the edit
region the output IS the input image, pixel for pixel.

Uses: insert a lesion into a normal breast image, enlarge a structure, simulate an anomaly from
normal anatomy. The model works on its square grid; images of any size are letterboxed, and the
generated region is resized back and pasted into the full-resolution original. A latent model
(`train --autoencoder`) runs the same loop on latents: the real image is encoded, a latent cell counts
as known when every pixel under it is, and the decoded result is pasted back the same way, so the
pixels outside the edit are still the input's exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy import ndimage

from sonosynth.data.imageio import pixels_to_unit, read_image, read_label_map, unit_to_pixels, write_png
from sonosynth.devices import resolve_device
from sonosynth.errors import DataError, SonosynthError
from sonosynth.files import output_folder, prepare_output
from sonosynth.settings import Config


@dataclass
class EditConfig(Config):
    """`steps` on the training schedule; each of the `jump_n_sample - 1` resamplings re-noises
    `jump_length` steps (RePaint's j and r); `margin_px` widens the edit region (original pixels)
    so the boundary of the new structure is generated, not pasted."""

    what: ClassVar[str] = "edit"

    steps: int = 50
    jump_length: int = 5
    jump_n_sample: int = 3
    margin_px: int = 8
    guidance_scale: float | None = None  # None: the run's own default
    eta: float = 0.0
    seed: int = 0
    prompt: str | None = None  # a Stable Diffusion run: this text instead of its template's prompt
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.jump_length < 1 or self.jump_n_sample < 1 or self.margin_px < 0:
            raise SonosynthError("edit: steps, jump length and jump count must be >= 1 and the margin >= 0")


@dataclass
class EditResult:
    image: np.ndarray  # same size and dtype as the input image
    mask: np.ndarray  # the edited mask
    region: np.ndarray  # bool: where pixels were regenerated
    model_evaluations: int


def edit_region(mask: np.ndarray, edited_mask: np.ndarray, margin_px: int) -> np.ndarray:
    """Where the masks differ, dilated by `margin_px` (a disc)."""
    changed = np.asarray(mask) != np.asarray(edited_mask)
    if margin_px <= 0 or not changed.any():
        return changed
    radius = int(margin_px)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return ndimage.binary_dilation(changed, structure=(yy**2 + xx**2) <= radius**2)


def repaint_scheduler(model_scheduler, eta: float):
    """A diffusers `RePaintScheduler` on the noise schedule the model was trained with."""
    from diffusers import RePaintScheduler

    config = model_scheduler.config
    return RePaintScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        trained_betas=config.get("trained_betas"),
        eta=eta,
    )


def repaint(model, image: np.ndarray, mask: np.ndarray, edited_mask: np.ndarray, config: EditConfig | None = None,
            class_labels=None, where: str = "edit") -> EditResult:
    """Regenerate `image` where `edited_mask` differs from `mask` (plus margin); see module docstring.

    `model` is a `sampling.SynthesisModel`; `class_labels` an optional (1, A) long tensor.
    """
    import torch

    from sonosynth.data.transforms import field_of_view, letterbox_image, letterbox_mask, unletterbox
    from sonosynth.diffusion.schedulers import is_flow, prediction_to_epsilon

    config = config or EditConfig()
    image, mask, edited_mask = np.asarray(image), np.asarray(mask), np.asarray(edited_mask)
    if not (image.shape == mask.shape == edited_mask.shape) or image.ndim != 2:
        raise DataError(f"{where}: image {image.shape}, mask {mask.shape} and edited mask {edited_mask.shape} "
                        "must be 2-D and the same size")
    if image.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{where}: image must be uint8 or uint16, got {image.dtype}")
    if int(edited_mask.max()) >= model.num_labels:
        raise DataError(f"{where}: edited mask has label {int(edited_mask.max())} but the model knows "
                        f"0..{model.num_labels - 1}")
    if not model.conditioned_on_masks:
        raise SonosynthError(f"edit needs a mask-conditioned model (spade, concat or controlnet), not '{model.kind}'")
    if is_flow(model.pipe.scheduler.config):
        raise SonosynthError("edit's RePaint steps a diffusion model's noise schedule; this run was trained with "
                             "flow matching (prediction_type flow): edit with a diffusion run")
    region = edit_region(mask, edited_mask, config.margin_px)
    if not region.any():
        raise DataError(f"{where}: the edited mask equals the mask; nothing to edit")

    size = model.size
    original = (letterbox_image(pixels_to_unit(image) * 2.0, size) - 1.0)[None, None]
    labels = letterbox_mask(edited_mask, size)[None]
    fov = letterbox_mask(field_of_view(image).astype(np.uint8), size)[None, None].float()
    # Any model pixel touching the region is unknown (area resize + threshold > 0, then one more pixel).
    unknown = letterbox_image(region.astype(np.float32), size) > 1e-3
    unknown = torch.from_numpy(ndimage.binary_dilation(unknown.numpy(), iterations=1))
    known = (~unknown).float()[None, None]

    device = model.unet.device
    scheduler = repaint_scheduler(model.pipe.scheduler, config.eta)
    scheduler.set_timesteps(config.steps, config.jump_length, config.jump_n_sample, device=device)
    model.steer(config.prompt)
    scale = model.default_guidance if config.guidance_scale is None else config.guidance_scale
    guidance = model.pipe.prepare_guidance(labels.to(device), fov=fov.to(device), guidance_scale=scale,
                                           class_labels=None if class_labels is None else class_labels.to(device),
                                           prompt=config.prompt)
    prediction_type = model.pipe.scheduler.config.prediction_type
    generator = torch.Generator().manual_seed(config.seed)
    original, known = original.to(device), known.to(device)
    factor = model.pipe.latent_factor
    if factor > 1:  # a latent model: RePaint on latents; a latent cell is known when every pixel under it is
        original = model.pipe.encode(original)
        known = 1.0 - torch.nn.functional.max_pool2d(1.0 - known, factor)
    x = torch.randn(original.shape, generator=generator).to(device)
    evaluations, t_last = 0, int(scheduler.timesteps[0]) + 1
    for t in scheduler.timesteps:
        t = int(t)
        if t < t_last:
            t_tensor = torch.tensor([t], device=device)
            prediction = model.pipe.guided_prediction(x, t_tensor, guidance)
            epsilon = prediction_to_epsilon(prediction, x, scheduler.alphas_cumprod[t], prediction_type)
            evaluations += 1
            x = scheduler.step(epsilon, t, x, original, known, generator=generator).prev_sample
        else:
            x = scheduler.undo_step(x, t_last, generator=generator)
        t_last = t
    x, _ = model.pipe.decode(x, fov.to(device))  # clamped, black outside the fov (decoded first if latent)
    generated = unletterbox(((x[0, 0].cpu() + 1.0) / 2.0), image.shape[0], image.shape[1]).numpy()
    generated = unit_to_pixels(generated, image.dtype)
    out = np.where(region, generated, image)
    return EditResult(out, edited_mask.astype(np.uint8), region, evaluations)


def edit_files(run: str | Path, image_path: str | Path, mask_path: str | Path, edited_path: str | Path | None,
               out: str | Path, config: EditConfig | None = None, attributes: Mapping[str, str] | None = None,
               overwrite: bool = False, anomaly: str | None = None) -> Path:
    """`sonosynth edit`: write OUT/ with image.png, mask.png (the edited mask), region.png and edit.json. The
    edited mask is a file, or the mask with its lesion (label 1) made into `anomaly` (seeded by `config.seed`)."""
    from sonosynth.synthesis.masks.anomaly import make_anomaly, parse_anomaly
    from sonosynth.synthesis.sampling import load_synthesis_model

    config = config or EditConfig()
    if (edited_path is None) == (not anomaly):
        raise SonosynthError("edit: give the edited mask (--edited-mask) or an anomaly to make of the mask "
                             "(--anomaly), one of them")
    parse_anomaly(anomaly)
    out = prepare_output(out, overwrite, inputs=[run, image_path, mask_path, edited_path])
    resolve_device(config.device)
    image, mask = read_image(image_path), read_label_map(mask_path)
    if edited_path is None:
        try:
            edited = make_anomaly(mask, str(anomaly), np.random.default_rng(config.seed))
        except SonosynthError as exc:
            raise SonosynthError(f"{mask_path}: {exc}") from None
    else:
        edited = read_label_map(edited_path)
    model = load_synthesis_model(run, device=config.device)
    class_labels = None
    if attributes:
        unknown = [k for k in attributes if k not in model.class_attributes]
        if unknown:
            raise SonosynthError(f"{run}: the model is not conditioned on {unknown} "
                                 f"(its attributes: {model.class_attributes or 'none'})")
        for name, value in attributes.items():
            if value not in model.class_values.get(name, []):
                raise SonosynthError(f"attribute {name}='{value}' not among {model.class_values.get(name, [])}")
        class_labels = model.class_tensor([dict(attributes)])
    result = repaint(model, image, mask, edited, config, class_labels, where=str(edited_path or mask_path))
    with output_folder(out, overwrite) as tmp:
        write_png(tmp / "image.png", result.image)
        write_png(tmp / "mask.png", result.mask)
        write_png(tmp / "region.png", result.region.astype(np.uint8) * 255)
        provenance = {"command": "sonosynth edit", "model": str(run), "image": str(image_path),
                      "mask": str(mask_path), "edited_mask": None if edited_path is None else str(edited_path),
                      **({"anomaly": anomaly} if anomaly else {}), "config": asdict(config),
                      "attributes": dict(attributes or {}), "model_evaluations": result.model_evaluations,
                      "edited_pixels": int(result.region.sum())}
        (tmp / "edit.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out

