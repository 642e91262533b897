"""`sonosynth classify ...`: train an image classifier (MONAI, from scratch) on real (+ synthetic) images."""

from __future__ import annotations

from pathlib import Path

import typer

from sonosynth.commands import options as opt

classify_app = typer.Typer(help="Train image classifiers (MONAI, from scratch).", no_args_is_help=True)


@classify_app.command("train")
def train_command(
    dataset: Path = typer.Argument(..., help="Real dataset folder (train/val/test splits from its manifest)."),
    out: Path = typer.Option(..., "--out", help="Output run folder: model.safetensors, config.yaml, metrics.json."),
    attribute: str = typer.Option("pathology", "--attribute", help="The categorical attribute that is the class."),
    synthetic: Path | None = typer.Option(
        None, "--synthetic", help="Synthetic dataset folder mixed into each batch (its pairs carry the attribute)."
    ),
    synthetic_ratio: float = typer.Option(0.5, help="Fraction of each batch drawn from --synthetic images."),
    net: str = typer.Option("small", "--net", help="tiny, small (CPU), densenet121 or efficientnet-b0."),
    size: int = typer.Option(64, help="Training size in pixels (images are letterboxed to size x size)."),
    max_steps: int = opt.max_steps(2000, "Maximum training steps (early stopping usually ends sooner)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per batch."),
    learning_rate: float = opt.learning_rate(1e-3),
    val_every: int = typer.Option(50, help="Validate every N steps."),
    patience: int = typer.Option(5, help="Stop after N validations without a better balanced accuracy."),
    classical: bool = typer.Option(False, "--classical", help="Strong classical augmentation instead of light."),
    seed: int = opt.SEED,
    auto_split: bool = opt.AUTO_SPLIT,
    device: str = opt.DEVICE,
    overwrite: bool = opt.OVERWRITE,
) -> None:
    """Train a classifier with class-weighted cross-entropy, early-stopped on validation balanced accuracy; score it
    once on the test split (balanced accuracy, macro AUC, per-class recall)."""
    from sonosynth.augment import AugmentConfig
    from sonosynth.classification.classifier import ClassifierConfig
    from sonosynth.classification.folders import classify_from_folders

    config = ClassifierConfig(
        attribute=attribute, net=net, size=size, max_steps=max_steps, batch_size=batch_size,
        learning_rate=learning_rate, val_every=val_every, patience=patience, synthetic_ratio=synthetic_ratio,
        classical=AugmentConfig.preset("classical") if classical else None, seed=seed,
    ).checked()
    path = classify_from_folders(dataset, out, config, synthetic_path=synthetic, overwrite=overwrite, device=device,
                                 auto_split=auto_split)
    typer.echo(f"classifier written to {path} (test scores in {path}/metrics.json)")


def register(app: typer.Typer) -> None:
    app.add_typer(classify_app, name="classify")
