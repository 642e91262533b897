"""Turning finished downstream cells into results.csv, results.md, a Dice-vs-k plot and report.html.

Every figure is embedded in the HTML as base64 PNG, so a report folder can be mailed or committed
as it is.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sonosynth.data.format import Dataset

ARM_ORDER = ("real", "real+synthetic", "synthetic")


def aggregate_cells(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (k, arm): each metric's mean and sample std over seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((str(cell["k"]), cell["arm"]), []).append(cell)
    rows = []
    for (k, arm), members in sorted(groups.items(), key=lambda kv: (_k_order(kv[0][0]), _arm_order(kv[0][1]))):
        row: dict[str, Any] = {
            "k": k,
            "arm": arm,
            "n_seeds": len(members),
            "n_real_images": float(np.mean([m["n_real_images"] for m in members])),
            "n_synthetic_images": int(members[0]["n_synthetic_images"]),
            "hd95_unit": members[0].get("hd95_unit", "px"),
        }
        keys = [key for key in members[0]["metrics"] if key != "n_images"]
        for key in keys:
            values = np.array([float(m["metrics"].get(key, math.nan)) for m in members], dtype=np.float64)
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
        dice_keys = [key for key in keys if key.startswith("dice_")]
        per_seed = np.array([np.nanmean([m["metrics"][d] for d in dice_keys]) for m in members], dtype=np.float64)
        row["dice_mean_mean"], row["dice_mean_std"] = _mean_std(per_seed)
        rows.append(row)
    return rows


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0


def _k_order(k: str) -> tuple[int, int]:
    if k == "-":
        return (2, 0)
    return (1, 0) if k == "all" else (0, int(k))


def _arm_order(arm: str) -> int:
    return ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER)


def write_results_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row.get(c, "")) for c in columns})
    os.replace(tmp, path)


def _csv_value(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _pm(row: dict[str, Any], key: str, digits: int) -> str:
    mean, std = row.get(f"{key}_mean", math.nan), row.get(f"{key}_std", math.nan)
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def results_markdown(rows: list[dict[str, Any]], labels: dict[str, str]) -> str:
    """The table: Dice per label, HD95 per label, HC error, each mean ± std over seeds."""
    foreground = [(v, name) for v, name in sorted(labels.items(), key=lambda kv: int(kv[0])) if v != "0"]
    unit = rows[0]["hd95_unit"] if rows else "px"
    has_hc = any("hc_abs_error_mm_mean" in r for r in rows)
    header = ["k (real subjects)", "arm", "seeds", "real images", "synthetic images"]
    header += [f"Dice {name}" for _, name in foreground]
    header += [f"HD95 {name} ({unit})" for _, name in foreground]
    header += ["HD95 missed"]
    if has_hc:
        header.append("HC abs. error (mm)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            "none" if row["k"] == "-" else row["k"],
            row["arm"],
            str(row["n_seeds"]),
            f"{row['n_real_images']:.0f}",
            str(row["n_synthetic_images"]),
        ]
        cells += [_pm(row, f"dice_{v}", 3) for v, _ in foreground]
        cells += [_pm(row, f"hd95_{v}", 2) for v, _ in foreground]
        cells.append(" / ".join(f"{row.get(f'hd95_{v}_missed_mean', 0):.1f}" for v, _ in foreground))
        if has_hc:
            cells.append(_pm(row, "hc_abs_error_mm", 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_dice_vs_k(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean foreground Dice against k, one line per arm; synthetic-only (no real data) as a flat band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in rows if r["k"] != "-"}, key=_k_order)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    positions = {k: i for i, k in enumerate(ks)}
    for arm in ARM_ORDER:
        arm_rows = [r for r in rows if r["arm"] == arm]
        if not arm_rows:
            continue
        if arm == "synthetic":
            (r,) = arm_rows[:1]
            mean, std = r["dice_mean_mean"], r["dice_mean_std"]
            ax.axhline(mean, linestyle="--", color="tab:green", label="synthetic only")
            ax.axhspan(mean - std, mean + std, color="tab:green", alpha=0.15)
            continue
        arm_rows.sort(key=lambda r: _k_order(r["k"]))
        x = [positions[r["k"]] for r in arm_rows]
        y = [r["dice_mean_mean"] for r in arm_rows]
        err = [r["dice_mean_std"] for r in arm_rows]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=arm)
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel("real training subjects (k)")
    ax.set_ylabel("Dice (mean over foreground labels)")
    ax.set_title("Segmentation on the real test split (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def sample_grid_png(datasets: Sequence[tuple[str, Dataset]], per_row: int = 6) -> bytes:
    """A grid of images with their mask outlines, one row per dataset (e.g. real, synthetic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(title, ds) for title, ds in datasets if len(ds)]
    fig, axes = plt.subplots(max(1, len(rows)), per_row, figsize=(2 * per_row, 2.1 * max(1, len(rows))), dpi=80,
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, (title, ds) in enumerate(rows):
        picks = np.linspace(0, len(ds) - 1, num=min(per_row, len(ds))).round().astype(int)
        for col, index in enumerate(picks):
            sample = ds[int(index)]
            ax = axes[row, col]
            ax.imshow(sample.image, cmap="gray")
            if sample.mask.any():
                ax.contour(sample.mask, levels=np.arange(0.5, int(sample.mask.max()) + 1), colors="yellow",
                           linewidths=0.8)
            ax.set_title(f"{title}: {sample.id}"[:28], fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def png_tag(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def markdown_table_to_html(markdown: str) -> str:
    lines = [line for line in markdown.strip().splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return ""
    def cells(line: str) -> list[str]:
        return [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]
    head = "".join(f"<th>{c}</th>" for c in cells(lines[0]))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells(line)) + "</tr>" for line in lines[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px}"
        "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:1px 4px}"
    )
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_downstream_report(
    out: Path,
    cells: Sequence[dict[str, Any]],
    real: Dataset,
    synthetic: Dataset | None,
    settings: dict[str, Any],
    command: str = "",
) -> None:
    rows = aggregate_cells(cells)
    write_results_csv(out / "results.csv", rows)
    table = results_markdown(rows, real.info.labels)
    seg = settings["segmentation"]
    notes = (
        f"Real data: `{settings['real']}`; synthetic data: `{settings['synthetic'] or 'none'}`.\n"
        f"Segmenter: MONAI U-Net '{seg['net']}' at {seg['size']} px, up to {seg['max_steps']} steps "
        f"(batch {seg['batch_size']}, early stopping on the real val split, patience {seg['patience']} x "
        f"{seg['val_every']} steps), synthetic ratio {seg['synthetic_ratio']} in real+synthetic batches.\n"
        "Metrics on the real test split in the original pixel grid; mean ± sample std over seeds. "
        "HD95 averages images where both maps have the label; 'HD95 missed' counts images (per seed) where "
        "the prediction or the reference lacks it.\n"
    )
    if command:
        notes += f"\nCommand: `{command}`\n"
    write_text_atomic(out / "results.md", f"# Downstream segmentation\n\n{notes}\n{table}")
    plot_dice_vs_k(rows, out / "dice_vs_k.png")
    sets = [("real test", real.subset("test") if len(real.subset("test")) else real)]
    if synthetic is not None:
        sets.append(("synthetic", synthetic))
    sections = [
        ("Results", markdown_table_to_html(table) + f"<p>{html.escape(notes)}</p>"),
        ("Dice vs k", png_tag((out / "dice_vs_k.png").read_bytes(), "Dice vs k")),
        ("Samples (mask outlines in yellow)", png_tag(sample_grid_png(sets), "sample grid")),
    ]
    write_text_atomic(out / "report.html", html_page("sonosynth downstream experiment", sections))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def quality_markdown(result: dict[str, Any]) -> str:
    """quality.md: one small table per question, with the real-vs-real reference beside each number."""
    dist, div, inten, mem = result["distribution"], result["diversity"], result["intensity"], result["memorisation"]
    lines = [
        "# Synthetic image quality",
        "",
        f"Real: `{result['real']}` ({result['n_real']} images, {result['real_reference']}); "
        f"synthetic: `{result['synthetic']}` ({result['n_synthetic']} images).",
        "",
    ]
    if result.get("command"):
        lines += [f"Command: `{result['command']}`", ""]
    lines += ["## Distribution distance", "", f"Features: {dist['features']}. {dist['note']}.", "",
              "| measure | synthetic vs real | held-out real vs real (reference) |", "|---|---|---|",
              f"| Fréchet distance | {_fmt(dist['fid'])} | {_fmt(dist.get('real_heldout_fid'))} |",
              f"| KID (mean ± std over subsets) | {_fmt(dist['kid_mean'])} ± {_fmt(dist['kid_std'], 2)} | "
              f"{_fmt(dist.get('real_heldout_kid_mean'))} |", ""]
    lines += ["## Mask fidelity", ""]
    fidelity = result.get("mask_fidelity")
    if fidelity:
        lines += ["Dice between each image's mask and the segmenter's prediction on it.", "",
                  "| images | label | Dice mean | Dice std | n |", "|---|---|---|---|---|"]
        for which, block in fidelity.items():
            for label, stats in block["dice"].items():
                lines.append(f"| {which} | {label} | {_fmt(stats['mean'])} | {_fmt(stats['std'])} | "
                             f"{block['n_images']} |")
    else:
        lines.append("Not measured (pass `--segmenter SEGRUN`).")
    lines += ["", "## Diversity", "", div["note"] + ".", "", "| set | mean pairwise MS-SSIM | pairs |", "|---|---|---|",
              f"| synthetic | {_fmt(div['ms_ssim_synthetic'])} | {div['pairs_synthetic']} |",
              f"| real | {_fmt(div['ms_ssim_real'])} | {div['pairs_real']} |", ""]
    hist = inten["histogram_distance"]
    lines += ["## Intensity and speckle (inside the field of view)", "",
              f"Histogram distance: Wasserstein-1 {_fmt(hist['wasserstein'])} (intensity in [0, 1]), "
              f"Jensen-Shannon {_fmt(hist['jensen_shannon'])}.", "",
              "| statistic | real (mean ± std) | synthetic (mean ± std) |", "|---|---|---|"]
    for key in ("mean_intensity", "speckle_snr", "local_std"):
        r, s = inten["real"][key], inten["synthetic"][key]
        lines.append(f"| {key} | {_fmt(r['mean'])} ± {_fmt(r['std'], 2)} | {_fmt(s['mean'])} ± {_fmt(s['std'], 2)} |")
    lines += ["", "## Memorisation", "",
              f"Nearest real training image per synthetic image; ratio = distance / median {mem['reference']} "
              f"distance. Near-copy: pixel ratio < {mem['near_copy_ratio']}. Full list: memorisation.csv.", "",
              "| measure | value |", "|---|---|",
              f"| median real reference distance (pixels, RMS) | {_fmt(mem['median_real_pixel_distance'])} |",
              f"| median synthetic NN ratio (pixels) | {_fmt(mem['median_synthetic_pixel_ratio'])} |",
              f"| median synthetic NN ratio (features) | {_fmt(mem['median_synthetic_feature_ratio'])} |",
              f"| near-copies flagged | {mem['near_copies']} of {result['n_synthetic']} |", ""]
    return "\n".join(lines)


def _nearest_pairs_png(rows: Sequence[dict[str, Any]], train: Dataset, synthetic: Dataset, count: int = 6) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real_by_id = {r.id: i for i, r in enumerate(train.records)}
    synth_by_id = {r.id: i for i, r in enumerate(synthetic.records)}
    picks = list(rows[:count])
    fig, axes = plt.subplots(2, max(1, len(picks)), figsize=(2 * max(1, len(picks)), 4.3), dpi=80, squeeze=False)
    for col, row in enumerate(picks):
        for r, (ds, index, title) in enumerate(
            ((synthetic, synth_by_id[row["id"]], f"{row['id']} r={row['pixel_ratio']:.2f}"),
             (train, real_by_id[row["nearest_real"]], f"nearest: {row['nearest_real']}"))
        ):
            ax = axes[r, col]
            ax.imshow(ds[index].image, cmap="gray")
            ax.set_title(title[:30], fontsize=7, color="red" if r == 0 and row["near_copy"] else "black")
            ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _histogram_png(histograms: dict[str, list[float]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=90)
    for name, values in histograms.items():
        centers = (np.arange(len(values)) + 0.5) / len(values)
        ax.plot(centers, values, label=name)
    ax.set_xlabel("intensity inside the field of view")
    ax.set_ylabel("fraction of pixels")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_quality_report(
    out: Path, result: dict[str, Any], memorisation: Sequence[dict[str, Any]], train: Dataset, synthetic: Dataset
) -> None:
    """quality.md, memorisation.csv (closest first) and report.html with grids and the histogram plot."""
    markdown = quality_markdown(result)
    write_text_atomic(out / "quality.md", markdown + "\n")
    write_results_csv(out / "memorisation.csv", list(memorisation))
    sections = []
    for block in markdown.split("\n## ")[1:]:
        title, _, body = block.partition("\n")
        paragraphs = [p for p in body.strip().split("\n\n") if p]
        content = "".join(
            markdown_table_to_html(p) if p.startswith("|") else f"<p>{html.escape(p)}</p>" for p in paragraphs
        )
        sections.append((title, content))
    sections += [
        ("Intensity histograms", png_tag(_histogram_png(result["intensity"]["histograms"]), "histograms")),
        ("Closest synthetic images and their nearest real training image",
         png_tag(_nearest_pairs_png(memorisation, train, synthetic), "nearest pairs")),
        ("Samples (mask outlines in yellow)",
         png_tag(sample_grid_png([("real", train), ("synthetic", synthetic)]), "sample grid")),
    ]
    write_text_atomic(out / "report.html", html_page("sonosynth synthetic image quality", sections))
