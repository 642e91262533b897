"""`sonosynth generate` and `sonosynth edit`: synthetic datasets and region edits from a trained model."""

from __future__ import annotations

from pathlib import Path

import typer

from sonosynth.commands import options as opt
from sonosynth.errors import SonosynthError


def _hc_range(value: str | None) -> tuple[float, float] | None:
    if not value:
        return None
    low, _, high = value.partition(":")
    try:
        bounds = (float(low), float(high or low))
    except ValueError:
        raise SonosynthError(f"--hc-mm '{value}': expected MM or MIN:MAX") from None
    if not 0 < bounds[0] <= bounds[1]:
        raise SonosynthError(f"--hc-mm '{value}': expected 0 < MIN <= MAX")
    return bounds


def generate_command(
    run: Path = typer.Argument(..., help="Run folder written by `sonosynth train` (or its model/ folder)."),
    source: Path = typer.Option(..., "--source", help="Dataset whose masks (train split if any) are the source."),
    mask_source: str = typer.Option(
        "deform,shape", "--mask-source",
        help="Which masks: train (as they are), deform, shape (PCA model), or several (--n split evenly, one dataset; "
        "the default, the measured best recipe: docs/results/hc18-ablation). A joint model needs train.",
    ),
    masks: str | None = opt.old_spelling("--masks", "--mask-source"),
    n: int = typer.Option(..., "--n", help="Number of pairs to write."),
    out: Path = typer.Option(..., "--out", help="Output dataset folder."),
    steps: int = opt.SAMPLE_STEPS,
    guidance: float | None = opt.GUIDANCE,
    scheduler: str | None = opt.SCHEDULER,
    seed: int = opt.SEED,
    batch_size: int = opt.BATCH_SIZE,
    split: str = opt.SPLIT,
    output_size: str = opt.OUTPUT_SIZE,
    hc_mm: str | None = typer.Option(None, "--hc-mm", help="shape masks: target head circumference MM or MIN:MAX."),
    hc_widen: float | None = typer.Option(
        None, "--hc-widen",
        help="shape masks: head circumference uniform over the source's hc_mm range widened by this fraction at both "
        "ends (0.25: 0.75 x smallest to 1.25 x largest). Default: 0.25 when the source records hc_mm.",
    ),
    size_widen: float | None = typer.Option(
        None, "--size-widen",
        help="shape masks: structure size uniform over the source masks' size range widened by this fraction at both "
        "ends (any anatomy; --hc-widen is the fetal-head form, in mm). Default: 0.25 when the source has no hc_mm.",
    ),
    attr: list[str] = typer.Option([], "--attr", metavar="NAME=VALUE",
                                   help="Fix an attribute: NAME=VALUE (repeatable)."),
    attr_dist: list[str] = typer.Option([], "--attr-dist", metavar="NAME=VALUE:WEIGHT,...",
                                        help="Target distribution: NAME=VALUE:WEIGHT,VALUE:WEIGHT (repeatable)."),
    anomaly: str | None = opt.ANOMALY,
    filter_dice: float | None = typer.Option(None, "--filter-dice", help="Minimum mask-fidelity Dice."),
    filter_mode: str = typer.Option("drop", "--filter-mode", help="drop (regenerate) or flag (keep, flagged=1)."),
    segmenter: Path | None = typer.Option(None, "--segmenter", help="Segmenter run (`segment train`) for Dice."),
    prompt: str | None = opt.PROMPT,
    conditioning_scale: float | None = typer.Option(
        None, "--conditioning-scale", help="ControlNet runs: weight of the mask's residuals (default: saved, 1)."
    ),
    device: str = opt.DEVICE,
    overwrite: bool = opt.OVERWRITE,
) -> None:
    """Write a synthetic dataset (images, masks, manifest with provenance) from a trained model."""
    from sonosynth.synthesis.generate import AttributePolicy, generate_pairs

    settings = {
        "steps": steps, "guidance_scale": guidance, "scheduler": scheduler, "seed": seed, "batch_size": batch_size,
        "split": split, "output_size": output_size, "target_hc_mm": _hc_range(hc_mm), "filter_dice": filter_dice,
        "filter_mode": filter_mode, "attributes": AttributePolicy.parse(attr, attr_dist), "prompt": prompt,
        "conditioning_scale": conditioning_scale, "device": device, "anomaly": anomaly,
    }
    path = generate_pairs(run, source, out, masks or mask_source, n, settings, hc_widen, size_widen, segmenter,
                          overwrite)
    typer.echo(f"synthetic dataset written to {path}")


def edit_command(
    run: Path = typer.Argument(..., help="Run folder written by `sonosynth train` (or its model/ folder)."),
    image: Path = typer.Option(..., "--image", help="The real image (PNG)."),
    mask: Path = typer.Option(..., "--mask", help="Its label map (PNG)."),
    edited_mask: Path | None = typer.Option(
        None, "--edited-mask", help="The label map as it should become (PNG); or make it with --anomaly."
    ),
    anomaly: str | None = opt.ANOMALY,
    out: Path = typer.Option(..., "--out", help="Output folder: image.png, mask.png, region.png, edit.json."),
    steps: int = typer.Option(50, "--steps", help="Denoising steps on the training schedule."),
    jump_length: int = typer.Option(5, "--jump-length", help="RePaint: steps re-noised per jump."),
    jump_n_sample: int = typer.Option(3, "--jump-n-sample", help="RePaint: passes over each jump (1 = none)."),
    margin: int = typer.Option(8, "--margin", help="Pixels around the changed area that are regenerated too."),
    guidance: float | None = opt.GUIDANCE,
    seed: int = opt.SEED,
    attr: list[str] = typer.Option([], "--attr", metavar="NAME=VALUE",
                                   help="Condition on an attribute: NAME=VALUE (repeatable)."),
    prompt: str | None = opt.PROMPT,
    device: str = opt.DEVICE,
    overwrite: bool = opt.OVERWRITE,
) -> None:
    """Regenerate a real image only where the edited mask differs (RePaint), keeping the rest."""
    from sonosynth.synthesis.edit import EditConfig, edit_files
    from sonosynth.synthesis.generate import AttributePolicy

    config = EditConfig(steps=steps, jump_length=jump_length, jump_n_sample=jump_n_sample, margin_px=margin,
                        guidance_scale=guidance, seed=seed, prompt=prompt, device=device).checked()
    attributes = AttributePolicy.parse(attr).fixed
    path = edit_files(run, image, mask, edited_mask, out, config, attributes, overwrite=overwrite, anomaly=anomaly)
    typer.echo(f"edited image written to {path}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
    app.command("edit")(edit_command)
