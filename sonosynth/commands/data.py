"""`sonosynth data ...`: import, export, merge, split, check, phantom."""

from __future__ import annotations

from pathlib import Path

import typer

from sonosynth.commands import options as opt

data_app = typer.Typer(help="Import, validate, split, merge and export datasets.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("import")
def import_command(
    format: str = typer.Argument(..., help="Source format: hc18, busi, camus, folder or nnunet."),
    src: Path = typer.Argument(..., help="Source folder (as published)."),
    out: Path = typer.Argument(..., help="New dataset folder to create."),
    overwrite: bool = opt.OVERWRITE,
    csv: Path | None = typer.Option(None, "--csv", help="hc18: pixel-size CSV (default: found beside the images)."),
    images: str | None = typer.Option(None, "--images", help="folder: image glob relative to SRC, e.g. 'img/*.png'."),
    masks: str | None = typer.Option(
        None, "--masks", help="folder: mask path template relative to SRC, e.g. 'lbl/{stem}_mask.png'."
    ),
    label_map: list[str] = typer.Option(
        [], "--label-map", metavar="SOURCE:TARGET",
        help="folder: mask value translation SOURCE:TARGET, e.g. 255:1 (repeatable)."
    ),
    labels: str | None = typer.Option(None, "--labels", help="folder: names of labels 1..K, comma separated."),
    subject_pattern: str | None = typer.Option(
        None, "--subject-pattern", help="folder: regex on the image file name whose group 1 is the subject."
    ),
    name_pattern: str | None = typer.Option(
        None,
        "--name-pattern",
        help="folder: regex on the image file name with named groups: (?P<subject>...) is the subject, every "
        "other named group a categorical attribute, e.g. '(?P<subject>p\\d+)_(?P<view>2CH|4CH)'.",
    ),
    spacing_mm: float | None = typer.Option(None, "--spacing-mm", help="folder: pixel size in mm for all images."),
    name: str | None = typer.Option(None, "--name", help="folder: dataset name (default: OUT's folder name)."),
) -> None:
    """Import a published dataset (or any folder of pairs) into a new sonosynth dataset folder."""
    from sonosynth.data.importers import import_dataset
    from sonosynth.data.importers.folder import parse_label_map
    from sonosynth.errors import DataError

    folder_options = {
        "--images": images,
        "--masks": masks,
        "--label-map": label_map or None,
        "--labels": labels,
        "--subject-pattern": subject_pattern,
        "--name-pattern": name_pattern,
        "--spacing-mm": spacing_mm,
        "--name": name,
    }
    options: dict = {"overwrite": overwrite}
    if format == "folder":
        if not images or not masks:
            raise DataError("import folder needs --images GLOB and --masks TEMPLATE")
        options.update(
            images=images,
            masks=masks,
            label_map=parse_label_map(label_map),
            label_names=[n.strip() for n in labels.split(",") if n.strip()] if labels else None,
            subject_pattern=subject_pattern,
            name_pattern=name_pattern,
            spacing_mm=spacing_mm,
            name=name,
        )
    else:
        unused = [flag for flag, value in folder_options.items() if value is not None]
        if unused:
            raise DataError(f"import {format}: {', '.join(unused)} only apply to the folder format")
    if csv is not None:
        if format != "hc18":
            raise DataError(f"import {format}: --csv only applies to the hc18 format")
        options["csv_path"] = csv
    summary = import_dataset(format, src, out, **options)
    typer.echo(summary.describe())
    if summary.empty_masks:
        shown = ", ".join(summary.empty_masks[:5]) + (" ..." if len(summary.empty_masks) > 5 else "")
        typer.echo(f"empty masks (allowed, background only): {len(summary.empty_masks)}: {shown}")


@data_app.command("export")
def export_command(
    format: str = typer.Argument(..., help="Target format: nnunet (nnU-Net v2 raw)."),
    dataset: Path = typer.Argument(..., help="Dataset folder to export."),
    out: Path = typer.Argument(..., help="Parent folder (e.g. $nnUNet_raw); DatasetNNN_NAME is created inside."),
    dataset_id: int = typer.Option(..., "--id", help="nnU-Net dataset id, 1..999."),
    name: str | None = typer.Option(None, "--name", help="Dataset name in the folder name (default: the dataset's)."),
    splits: str | None = typer.Option(None, "--splits", help="Only these splits, comma separated (default: all)."),
    overwrite: bool = opt.OVERWRITE,
) -> None:
    """Export a dataset to another tool's format (nnU-Net v2 raw: imagesTr, labelsTr, dataset.json)."""
    from sonosynth.data.export import export_nnunet
    from sonosynth.errors import DataError

    if format != "nnunet":
        raise DataError(f"unknown export format '{format}' (choose from nnunet)")
    target = export_nnunet(dataset, out, dataset_id, name=name, splits=opt.name_list(splits), overwrite=overwrite)
    typer.echo(f"exported to {target}")


@data_app.command("merge")
def merge_command(
    datasets: list[Path] = typer.Argument(..., help="Dataset folders to merge (two or more)."),
    out: Path = typer.Option(..., "--out", help="New dataset folder to create."),
    foreground: str | None = typer.Option(
        None, "--foreground", help="Every structure as one label of this name (datasets with other labels)."
    ),
    splits: str | None = typer.Option(
        None, "--splits", help="Only these splits, comma separated; an empty name is the pairs without a split, "
        "e.g. 'train,val,' (default: all)."
    ),
    name: str | None = typer.Option(None, "--name", help="Dataset name (default: OUT's folder name)."),
    overwrite: bool = opt.OVERWRITE,
) -> None:
    """Merge datasets into one (ids and subjects prefixed by each dataset's name), e.g. to pretrain a generator."""
    from sonosynth.data.merge import merge_datasets

    merged = merge_datasets(datasets, out, name=name, foreground=foreground, splits=opt.name_list(splits),
                            overwrite=overwrite)
    counts = ", ".join(f"{m['dataset']}: {m['pairs']}" for m in merged.info.provenance["merged"])
    typer.echo(f"{len(merged)} pairs in {out} ({counts}); labels {merged.info.labels}")


@data_app.command("split")
def split_command(
    dataset: Path = typer.Argument(..., help="Dataset folder; its manifest's split column is rewritten."),
    by: str = typer.Option("subject", "--by", help="Group records by 'subject' (never split a subject) or 'id'."),
    val: float = typer.Option(0.15, "--val", help="Fraction of groups for validation."),
    test: float = typer.Option(0.15, "--test", help="Fraction of groups for testing."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffle (same seed, same split)."),
) -> None:
    """Assign train/val/test splits, grouped by subject, into the manifest."""
    from sonosynth.data.splits import SplitConfig, split_dataset

    counts = split_dataset(dataset, SplitConfig(by=by, val=val, test=test, seed=seed).checked())
    typer.echo(", ".join(f"{split}: {counts.get(split, 0)}" for split in ("train", "val", "test")))


@data_app.command("check")
def check_command(
    dataset: Path = typer.Argument(..., help="Dataset folder to validate."),
    hashes: bool = typer.Option(True, "--hashes/--no-hashes", help="Verify sha256 of every file."),
) -> None:
    """Validate a dataset (files, sha256, sizes, labels) and print a summary; exit 1 on problems."""
    from sonosynth.data.validate import check_dataset, print_report

    report = check_dataset(dataset, verify_hashes=hashes)
    print_report(report)
    if not report.ok:
        raise typer.Exit(1)
