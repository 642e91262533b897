"""`sonosynth evaluate ...`: the downstream segmentation experiment and image-quality measures."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from sonosynth.commands import options as opt

evaluate_app = typer.Typer(help="Downstream segmentation experiment and image-quality report.", no_args_is_help=True)


def command_line(ctx: typer.Context, name: str, leave_out: tuple[str, ...] = ()) -> str:
    """The command as a user would retype it: every option that differs from its default (but `leave_out`)."""
    parts = ["sonosynth", "evaluate", name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or param.name in leave_out:
            continue
        if isinstance(value, bool):
            flags = param.opts if value else getattr(param, "secondary_opts", [])
            parts.extend(flags[:1])
        elif isinstance(value, list | tuple):
            for item in value:
                parts += [param.opts[0], shlex.quote(str(item))]
        else:
            parts += [param.opts[0], shlex.quote(str(value))]
    return " ".join(parts)


@evaluate_app.command("downstream")
def downstream_command(
    ctx: typer.Context,
    real: Path = typer.Option(..., "--real", help="Real dataset folder (train/val/test splits)."),
    out: Path = typer.Option(..., "--out", help="Report folder (resumed if it exists)."),
    generator_per_k: Path | None = typer.Option(
        None, "--generator-per-k",
        help="Generator recipe YAML: train a generator on each cell's k subjects only (the honest protocol).",
    ),
    generators: Path | None = typer.Option(
        None, "--generators",
        help="Folder of the per-k generators, shared by reports that train them alike (default: OUT/generators).",
    ),
    synthetic: Path | None = typer.Option(
        None, "--synthetic", help="One synthetic dataset for every k (its generator saw more real data: reported)."
    ),
    k: str = typer.Option("5,10,20,all", "--k", help="Real training subjects per cell, comma separated."),
    train_where: str = typer.Option(
        "", "--train-where",
        help="A designed shift: draw the k subjects and validate only on pairs meeting this condition "
        "(hc_mm<150, view=2CH, spacing_mm>=0.2); the test split stays whole.",
    ),
    auto_split: bool = opt.AUTO_SPLIT,
    selection: float = typer.Option(
        0.0, "--selection", help="Set this fraction of the test subjects aside as the selection split: choose levers "
        "and defaults on its comparisons (selection.md); every reported number is on the other test subjects."
    ),
    unannotated: str = opt.UNANNOTATED,
    seeds: int = typer.Option(3, "--seeds", help="Seeds per cell (mean ± std over them)."),
    only_seeds: str | None = typer.Option(
        None, "--only-seeds", help="Run only these seeds' missing cells now, comma separated, e.g. 3,4 (the report "
        "covers every finished cell)."
    ),
    arms: str = opt.DOWNSTREAM_ARMS,
    structure: list[str] = typer.Option(
        [], "--structure", metavar="NAME=1+2",
        help="Score a union of labels as one structure, NAME=1+2 (repeatable; default: each label).",
    ),
    classical_config: Path | None = typer.Option(
        None, "--classical-config", help="YAML of values that change the classical preset of the +classical arms."
    ),
    size: int = typer.Option(64, help="Segmenter training size in pixels."),
    net_size: str = opt.net_size("small", f"Segmenter size preset: {opt.NET_SIZES}."),
    net: str = opt.segmenter_net(),
    weights: Path | None = opt.sam_weights(),
    sam_box: str = opt.sam_box(),
    max_steps: int = opt.max_steps(4000, "Maximum training steps per cell (early stopping usually ends sooner)."),
    steps: int | None = opt.old_spelling("--steps", "--max-steps"),
    batch_size: int = opt.SEGMENTER_BATCH_SIZE,
    learning_rate: float = opt.learning_rate(1e-3),
    val_every: int = typer.Option(100, help="Validate every N steps."),
    patience: int = typer.Option(5, help="Stop after N validations without improvement."),
    min_steps: int = opt.MIN_STEPS,
    synthetic_ratio: float = typer.Option(0.5, help="Fraction of each real+synthetic batch that is synthetic."),
    synthetic_schedule: str = opt.synthetic_schedule(),
    device: str = opt.DEVICE,
    head_circumference: bool | None = typer.Option(
        None, "--hc/--no-hc", help="Report head-circumference error (default: when label 1 is 'head')."
    ),
    report_only: bool = typer.Option(
        False, "--report-only", help="Train nothing: write the report of the cells finished so far."
    ),
    task: str = typer.Option("segment", "--task", help="segment (a segmenter per cell) or classify (a classifier "
                             "per cell; k then counts subjects per class)."),
    label_attribute: str = typer.Option("pathology", help="--task classify: the categorical attribute (the class)."),
    classifier_net: str = typer.Option("small", help="--task classify: tiny, small, densenet121, efficientnet-b0."),
    workers: int = typer.Option(
        0, "--workers", min=0, help="Run the seeds' cells in this many processes at once, the cores shared among "
        "them (0: one per core, or per OMP_NUM_THREADS thread; measured faster than threads, docs/training.md)."
    ),
) -> None:
    """Segmenters for each k x arm x seed: Dice, HD95, HC error and paired differences on the real test split."""
    from sonosynth.evaluation.downstream import downstream_config, run_downstream
    from sonosynth.evaluation.generators import is_flat_recipe
    from sonosynth.segmentation.common import SegmentationConfig

    segmentation = SegmentationConfig(
        size=size, **opt.segmenter_choice(net, net_size, weights, sam_box), max_steps=opt.either(max_steps, steps),
        batch_size=batch_size, learning_rate=learning_rate, val_every=val_every, patience=patience,
        min_steps=min_steps, synthetic_ratio=synthetic_ratio, synthetic_schedule=synthetic_schedule,
    ).checked()
    config = downstream_config(
        real, segmentation, k=k, seeds=seeds, arms=arms, has_synthetic=synthetic is not None,
        generator_per_k=generator_per_k, generators=generators, classical_config=classical_config,
        structure=structure, head_circumference=head_circumference, train_where=train_where, auto_split=auto_split,
        selection=selection, task=task, label_attribute=label_attribute, classifier_net=classifier_net,
        unannotated=unannotated.strip().lower(),
    )
    if generator_per_k is not None and is_flat_recipe(generator_per_k):
        typer.echo(f"note: {generator_per_k} is a flat recipe (release 0.1): its fields belong in sections train "
                   "and generate (docs/evaluation.md), which it will give way to in the next release", err=True)
    command = command_line(ctx, "downstream", leave_out=("report_only", "only_seeds", "workers"))  # every cell's
    path = run_downstream(real, out, config, synthetic_path=synthetic, command=command, device=device,
                          report_only=report_only, only_seeds=opt.int_list(only_seeds, "--only-seeds"),
                          workers=workers)
    typer.echo(f"results in {path}/results.md, {path}/results.csv, {path}/comparisons.csv, {path}/report.html")


@evaluate_app.command("anomaly")
def anomaly_command(
    ctx: typer.Context,
    real: Path = typer.Option(..., "--real", help="Real dataset folder with a class attribute (e.g. BUSI pathology)."),
    out: Path = typer.Option(..., "--out", help="Report folder (resumed if it exists)."),
    generator_per_k: Path = typer.Option(
        ..., "--generator-per-k", help="Generator recipe YAML: a generator per cell on its k negatives only."
    ),
    k: str = typer.Option("10", "--k", help="Training subjects per class, comma separated."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds per cell."),
    label_attribute: str = typer.Option("pathology", help="The categorical attribute that is the class."),
    negative: str = typer.Option("benign", help="The class the generator and every arm see."),
    positive: str = typer.Option("malignant", help="The abnormal class: only the real-positive arm trains on it."),
    anomaly: str = typer.Option("spiculated+taller-than-wide", help="The anomaly the generator's masks are edited "
                                "into (docs/synthesis.md)."),
    classifier_net: str = typer.Option("small", help="tiny, small, densenet121, efficientnet-b0."),
    size: int = typer.Option(64, help="Classifier input size in pixels."),
    max_steps: int = opt.max_steps(4000, "Maximum classifier steps per cell (early stopping usually ends sooner)."),
    min_steps: int = opt.MIN_STEPS,
    auto_split: bool = opt.AUTO_SPLIT,
    device: str = opt.DEVICE,
) -> None:
    """Anomalies without abnormal data: a classifier on simulated positives vs a one-class detector and k real ones."""
    from sonosynth.classification.classifier import ClassifierConfig
    from sonosynth.evaluation.anomaly import AnomalyConfig, run_anomaly
    from sonosynth.evaluation.downstream import parse_ks
    from sonosynth.evaluation.generators import GeneratorRecipe

    config = AnomalyConfig(
        attribute=label_attribute, negative=negative, positive=positive, ks=parse_ks(k), seeds=seeds, anomaly=anomaly,
        generator=GeneratorRecipe.from_yaml(generator_per_k), auto_split=auto_split,
        classifier=ClassifierConfig(net=classifier_net, size=size, max_steps=max_steps, min_steps=min_steps),
    ).checked()
    path = run_anomaly(real, out, config, command=command_line(ctx, "anomaly"), device=device)
    typer.echo(f"results in {path}/results.md, {path}/comparisons.csv, {path}/samples.png")


@evaluate_app.command("quality")
def quality_command(
    ctx: typer.Context,
    real: Path = typer.Option(..., "--real", help="Real dataset folder (its train split is the reference)."),
    synthetic: Path = typer.Option(..., "--synthetic", help="Synthetic dataset folder."),
    out: Path = typer.Option(..., "--out", help="Report folder to create."),
    segmenter: Path | None = typer.Option(None, "--segmenter", help="SEGRUN for mask fidelity."),
    inception: Path | None = typer.Option(
        None, "--inception", help="Local pt_inception-2015-12-05 weights for standard FID/KID (needs torch-fidelity)."
    ),
    size: int = typer.Option(128, help="Images are letterboxed to size x size for the measures."),
    near_copy_ratio: float = typer.Option(0.5, help="Flag synthetic images closer than this x real-to-real."),
    seed: int = opt.SEED,
    device: str = opt.DEVICE,
    overwrite: bool = opt.OVERWRITE,
) -> None:
    """Mask fidelity, FID/KID, MS-SSIM diversity, intensity/speckle statistics and memorisation."""
    from sonosynth.evaluation.quality import QualityConfig, evaluate_quality

    config = QualityConfig(size=size, near_copy_ratio=near_copy_ratio, seed=seed).checked()
    command = command_line(ctx, "quality")
    path = evaluate_quality(
        real, synthetic, out, config, segmenter_path=segmenter, inception_path=inception, overwrite=overwrite,
        command=command, device=device,
    )
    typer.echo(f"quality report in {path}/quality.md and {path}/report.html")


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
