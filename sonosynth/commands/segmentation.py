"""`sonosynth segment ...`: train a MONAI U-Net segmenter and apply it."""

from __future__ import annotations

from pathlib import Path

import typer

from sonosynth.commands import options as opt

segment_app = typer.Typer(help="Train and apply segmentation networks (MONAI U-Net).", no_args_is_help=True)


@segment_app.command("train")
def train_command(
    dataset: Path = typer.Argument(..., help="Real dataset folder (train/val splits from its manifest)."),
    out: Path = typer.Option(..., "--out", help="Output run folder (SEGRUN)."),
    synthetic: Path | None = typer.Option(
        None, "--synthetic", help="Synthetic dataset folder mixed into each batch (as `evaluate downstream`'s)."
    ),
    extra: Path | None = opt.old_spelling("--extra", "--synthetic"),
    synthetic_ratio: float = typer.Option(0.5, help="Fraction of each batch drawn from --synthetic pairs."),
    synthetic_schedule: str = opt.synthetic_schedule(),
    size: int = typer.Option(64, help="Training size in pixels (images are letterboxed to size x size)."),
    net_size: str = opt.net_size("small"),
    net: str = opt.segmenter_net(),
    weights: Path | None = opt.sam_weights(),
    sam_box: str = opt.sam_box(),
    max_steps: int = opt.max_steps(2000, "Maximum training steps (early stopping usually ends sooner)."),
    steps: int | None = opt.old_spelling("--steps", "--max-steps"),
    batch_size: int = opt.SEGMENTER_BATCH_SIZE,
    learning_rate: float = opt.learning_rate(1e-3),
    val_every: int = typer.Option(100, help="Validate every N steps."),
    patience: int = typer.Option(5, help="Stop after N validations without improvement."),
    min_steps: int = opt.MIN_STEPS,
    augment: bool = typer.Option(True, help="Augmentation on or off (light affine + gain/gamma unless --classical)."),
    flip: bool = typer.Option(False, help="Also flip left-right (off: fans have an orientation)."),
    classical: bool = typer.Option(
        False, "--classical", help="Strong classical (MONAI) augmentation instead of the light one."
    ),
    classical_config: Path | None = typer.Option(
        None, "--classical-config", help="YAML of values that change the classical preset (implies --classical)."
    ),
    seed: int = opt.SEED,
    auto_split: bool = opt.AUTO_SPLIT,
    device: str = opt.DEVICE,
    overwrite: bool = opt.OVERWRITE,
) -> None:
    """Train a segmenter with Dice + cross-entropy and early stopping on the validation split."""
    from sonosynth.augment import AugmentConfig
    from sonosynth.segmentation.common import SegmentationConfig
    from sonosynth.segmentation.train import train_from_folders

    use_classical = classical or classical_config is not None
    classical_settings = AugmentConfig.preset_file("classical", classical_config) if use_classical else None
    config = SegmentationConfig(
        size=size,
        **opt.segmenter_choice(net, net_size, weights, sam_box),
        max_steps=opt.either(max_steps, steps),
        batch_size=batch_size,
        learning_rate=learning_rate,
        val_every=val_every,
        patience=patience,
        min_steps=min_steps,
        synthetic_ratio=synthetic_ratio,
        synthetic_schedule=synthetic_schedule,
        augment=augment,
        flip=flip,
        seed=seed,
        classical=classical_settings,
    ).checked()
    path = train_from_folders(dataset, out, config, synthetic_path=opt.either(synthetic, extra), overwrite=overwrite,
                              device=device, auto_split=auto_split)
    typer.echo(f"segmenter written to {path}")


@segment_app.command("predict")
def predict_command(
    segrun: Path = typer.Argument(..., help="Run folder written by `segment train`."),
    images: Path = typer.Argument(..., help="A dataset folder, a folder of PNG images, or one PNG."),
    out: Path = typer.Option(..., "--out", help="Output folder for the label-map PNGs."),
    device: str = opt.DEVICE,
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Write one label-map PNG per image, at the image's original size."""
    from sonosynth.segmentation.predict import predict_folder

    path = predict_folder(segrun, images, out, overwrite=overwrite, device=device)
    typer.echo(f"label maps written to {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(segment_app, name="segment")
