"""Turning finished downstream cells into results.csv, results.md, a Dice-vs-k plot and report.html.

Every figure is embedded in the HTML as base64 PNG, so a report folder can be mailed or committed
as it is.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sonosynth.data.format import Dataset
from sonosynth.evaluation.generators import GeneratorRecipe
from sonosynth.files import atomic_path, write_text_atomic

SELECTION_IDS = "selection_ids.json"  # the selection split's test image ids, so a page's tables rebuild from its cells
ARM_ORDER = ("real", "real+classical", "real+pseudo-labels", "real+pseudo-labels+classical", "real+synthetic",
             "real+synthetic+classical", "real+synthetic+pseudo-labels", "real+synthetic+pseudo-labels+classical",
             "synthetic")
COMPARISONS = (  # (arm, baseline): every arm against real, the synthetic arms against classical, and with
    # unannotated scans self-training against its real arm and the synthetic arms against self-training
    ("real+classical", "real"),
    ("real+synthetic", "real"),
    ("real+synthetic+classical", "real"),
    ("synthetic", "real"),
    ("real+synthetic", "real+classical"),
    ("real+synthetic+classical", "real+classical"),
    ("real+pseudo-labels", "real"),
    ("real+pseudo-labels+classical", "real+classical"),
    ("real+synthetic", "real+pseudo-labels"),
    ("real+synthetic+classical", "real+pseudo-labels+classical"),
    ("real+synthetic+pseudo-labels", "real+pseudo-labels"),
    ("real+synthetic+pseudo-labels+classical", "real+pseudo-labels+classical"),
)


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
            "n_test_images": members[0].get("n_test_images", ""),
            "hd95_unit": members[0].get("hd95_unit", "px"),
            "n_converged": sum(bool(m.get("converged")) for m in members),
            "best_step_mean": float(np.mean([m.get("best_step", math.nan) for m in members])),
            "steps_mean": float(np.mean([m.get("steps", math.nan) for m in members])),
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
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row.get(c, "")) for c in columns})


def _csv_value(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _pm(row: dict[str, Any], key: str, digits: int) -> str:
    """mean ± sample std over seeds; the mean alone for one seed (no spread is known)."""
    mean, std = row.get(f"{key}_mean", math.nan), row.get(f"{key}_std", math.nan)
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if row.get("n_seeds", 2) < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def structure_names(structures: dict[str, list[int]], labels: dict[str, str]) -> dict[str, str]:
    """Display names: a single label keyed by its value shows the label's name."""
    return {key: labels.get(key, key) if key.isdigit() and members == [int(key)] else key
            for key, members in ((k, [int(v) for v in m]) for k, m in structures.items())}


def results_markdown(rows: list[dict[str, Any]], labels: dict[str, str],
                     structures: dict[str, list[int]] | None = None) -> str:
    """The table: Dice and HD95 per structure, false positives, HC error (mean ± std over seeds), convergence."""
    names = structure_names(structures or {v: [int(v)] for v in labels if v != "0"}, labels)
    unit = rows[0]["hd95_unit"] if rows else "px"
    has_hc = any("hc_abs_error_mm_mean" in r for r in rows)
    with_fp = [key for key in names if any(f"fp_rate_{key}_mean" in r for r in rows)]
    header = ["k (real subjects)", "arm", "seeds", "real images", "synthetic images"]
    header += [f"Dice {name}" for name in names.values()]
    header += [f"HD95 {name} ({unit})" for name in names.values()]
    header += ["HD95 missed"]
    header += [f"false-positive rate {names[key]}" for key in with_fp]
    if has_hc:
        header.append("HC abs. error (mm)")
    header += ["converged", "best step (mean)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            "none" if row["k"] == "-" else row["k"],
            row["arm"],
            str(row["n_seeds"]),
            f"{row['n_real_images']:.0f}",
            str(row["n_synthetic_images"]),
        ]
        cells += [_pm(row, f"dice_{key}", 3) for key in names]
        cells += [_pm(row, f"hd95_{key}", 2) for key in names]
        cells.append(" / ".join(f"{row.get(f'hd95_{key}_missed_mean', 0):.1f}" for key in names))
        cells += [_pm(row, f"fp_rate_{key}", 3) for key in with_fp]
        if has_hc:
            cells.append(_pm(row, "hc_abs_error_mm", 2))
        cells += [f"{row.get('n_converged', 0)}/{row['n_seeds']}", f"{row.get('best_step_mean', math.nan):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cells_by_k_and_arm(cells: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """{(k, arm): {seed: cell}}: how the comparisons and the worth table pair cells."""
    by_key: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for cell in cells:
        by_key.setdefault((str(cell["k"]), cell["arm"]), {})[int(cell["seed"])] = cell
    return by_key


def comparison_rows(cells: Sequence[dict[str, Any]], structures: dict[str, list[int]],
                    labels: dict[str, str]) -> list[dict[str, Any]]:
    """Paired differences (arm - baseline) per k and metric, with bootstrap intervals and verdicts."""
    from sonosynth.evaluation.statistics import paired_bootstrap, per_image_matrix

    names = structure_names(structures, labels)
    by_key = cells_by_k_and_arm(cells)
    ks = sorted({k for k, _ in by_key if k != "-"}, key=_k_order)
    rows = []
    for k in ks:
        for arm, baseline in COMPARISONS:
            a_cells = by_key.get((k, arm)) or (by_key.get(("-", arm)) if arm == "synthetic" else None)
            b_cells = by_key.get((k, baseline))
            if not a_cells or not b_cells:
                continue
            seeds = sorted(set(a_cells) & set(b_cells))
            if not seeds:
                continue
            a_list, b_list = [a_cells[s] for s in seeds], [b_cells[s] for s in seeds]
            ids = [entry["id"] for entry in a_list[0]["per_image"]]
            metrics = [(f"Dice {names[key]} (points)", "dice", key, True, 100.0) for key in names]
            metrics += [(f"HD95 {names[key]}", "hd95", key, False, 1.0) for key in names]
            if any(not e.get("in_truth", {}).get(key, True) for e in a_list[0]["per_image"] for key in names):
                metrics += [(f"false positives {names[key]} (points)", "fp", key, False, 100.0) for key in names]
            if a_list[0]["per_image"] and a_list[0]["per_image"][0].get("hc_abs_error_mm") is not None:
                metrics.append(("HC abs. error (mm)", "hc_abs_error_mm", None, False, 1.0))
            for title, metric, key, higher, scale in metrics:
                diff = paired_bootstrap(per_image_matrix(a_list, ids, metric, key) * scale,
                                        per_image_matrix(b_list, ids, metric, key) * scale, higher_is_better=higher)
                if diff.n_images == 0:
                    continue
                rows.append({"k": k, "arm": arm, "baseline": baseline, "metric": title,
                             "structure": names.get(key, "") if key is not None else "", "mean": diff.mean,
                             "low": diff.low, "high": diff.high, "n_seeds": diff.n_seeds,
                             "n_images": diff.n_images, "verdict": diff.verdict})
    return rows


def worth_rows(cells: Sequence[dict[str, Any]], structures: dict[str, list[int]],
               labels: dict[str, str]) -> list[dict[str, Any]]:
    """Worth in annotations: for each arm beside `real` at each k, the real subjects the real-only arm needs to
    reach its Dice (`statistics.equivalent_subjects`), from the real-only curve over every measured k. Needs the
    real arm at two k or more, on the seeds the compared arm has."""
    from sonosynth.evaluation.statistics import equivalent_subjects, per_image_matrix

    names = structure_names(structures, labels)
    by_key = cells_by_k_and_arm(cells)
    real = {int(k): seeds for (k, arm), seeds in by_key.items() if arm == "real" and k.isdigit()}
    rows = []
    for (k, arm), arm_cells in sorted(by_key.items(), key=lambda item: (_k_order(item[0][0]), _arm_order(item[0][1]))):
        if arm == "real" or not k.isdigit():
            continue
        seeds = sorted(set(arm_cells).intersection(*(set(c) for c in real.values()))) if len(real) >= 2 else []
        if not seeds:
            continue
        ids = [entry["id"] for entry in arm_cells[seeds[0]]["per_image"]]
        for key in names:
            curve = {rk: per_image_matrix([real[rk][s] for s in seeds], ids, "dice", key) for rk in real}
            worth = equivalent_subjects(curve, per_image_matrix([arm_cells[s] for s in seeds], ids, "dice", key),
                                        int(k))
            rows.append({"k": k, "arm": arm, "structure": names[key], "subjects": worth.subjects,
                         "low": worth.low, "high": worth.high, "brief": worth.brief(),
                         "per_k": worth.brief(per_k=True), "n_seeds": len(seeds),
                         "real_k": ",".join(map(str, worth.measured))})
    return rows


def worth_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| k | arm | structure | real subjects for the same Dice [95 % CI] | x k | real-only curve at k | seeds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['arm']} | {r['structure']} | {r['brief']} | {r['per_k']} | {r['real_k']} | "
                     f"{r['n_seeds']} |")
    return "\n".join(lines) + "\n"


def verdicts_in_words(rows: list[dict[str, Any]]) -> str:
    """One line per k and synthetic arm: does it beat real, and the classical baseline, on Dice?"""
    lines = []
    for r in rows:
        if "synthetic" not in r["arm"] or not r["metric"].startswith("Dice"):
            continue
        lines.append(
            f"- k={r['k']}: **{r['arm']}** vs {r['baseline']}, Dice {r['structure']}: **{r['verdict']}** "
            f"({r['mean']:+.2f} points [{r['low']:+.2f}, {r['high']:+.2f}])"
        )
    return "\n".join(lines) + "\n" if lines else ""


def comparisons_markdown(rows: list[dict[str, Any]]) -> str:
    header = ["k", "arm", "vs", "metric", "difference [95 % CI]", "seeds x images", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['arm']} | {r['baseline']} | {r['metric']} | "
            f"{r['mean']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] | {r['n_seeds']} x {r['n_images']} | "
            f"{r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def plot_dice_vs_k(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean foreground Dice against k, one line per arm; synthetic-only (no real data) as a flat band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in rows if r["k"] != "-"}, key=_k_order)
    if not ks:
        ks = ["-"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    positions = {k: i for i, k in enumerate(ks)}
    for arm in ARM_ORDER:
        arm_rows = [r for r in rows if r["arm"] == arm]
        if not arm_rows:
            continue
        if arm == "synthetic" and arm_rows[0]["k"] == "-":  # one shared synthetic set: no k axis
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


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
            ax.set_title(f"{shortened(title)}\n{shortened(sample.id)}", fontsize=7)
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


def write_downstream_report(
    out: Path,
    cells: Sequence[dict[str, Any]],
    real: Dataset,
    synthetic: Dataset | None,
    settings: dict[str, Any],
    command: str = "",
    selection: set[str] | None = None,
) -> None:
    """results.csv, comparisons.csv, results.md (tables, protocol in words, verdicts), dice_vs_k.png, report.html.

    With `selection` (the ids of the selection split's test images), every table is on the other test images, and
    selection.csv / selection.md hold the comparisons on the selection split (for choosing, not for claims)."""
    structures = settings.get("structures") or {v: [int(v)] for v in real.info.labels if v != "0"}
    if selection:
        from sonosynth.evaluation.selection import restrict

        kept = {e["id"] for e in cells[0]["per_image"]} - selection
        on_selection = comparison_rows([restrict(c, selection) for c in cells], structures, real.info.labels)
        write_results_csv(out / "selection.csv", on_selection)
        page = (f"# Selection split\n\n{len(selection)} test images of {100 * float(settings['selection']):g} % of "
                "the test subjects, set aside (`evaluation.selection`, fixed seed): choose levers, recipes "
                "and defaults on these comparisons; the report's results are on the other "
                f"{len(kept)} test images only, read once for the claim.\n\n"
                + (comparisons_markdown(on_selection) if on_selection else "No paired comparison.\n"))
        write_text_atomic(out / "selection.md", page)
        write_text_atomic(out / SELECTION_IDS, json.dumps(sorted(selection), indent=0) + "\n")  # the cut, re-readable
        cells = [restrict(c, kept) for c in cells]
    rows = aggregate_cells(cells)
    write_results_csv(out / "results.csv", rows)
    table = results_markdown(rows, real.info.labels, structures)
    compared = comparison_rows(cells, structures, real.info.labels)
    write_results_csv(out / "comparisons.csv", compared)
    notes = _protocol_notes(settings, cells, command)
    verdicts = comparisons_markdown(compared) if compared else "No paired comparison (one arm only).\n"
    in_words = verdicts_in_words(compared)
    worth = worth_rows(cells, structures, real.info.labels)
    if worth:
        write_results_csv(out / "worth.csv", worth)
        in_words += ("\n### Worth in annotations\n\nHow many real subjects the real-only arm needs to reach each arm's "
                     "Dice: read off the real-only Dice-vs-k curve (made non-decreasing, linear in log k between the "
                     "measured k; beyond its ends only a bound), with a 95 % interval resampling seeds and test "
                     "images.\n\n" + worth_markdown(worth))
    if any(r["n_seeds"] < 2 for r in compared):
        in_words += ("\n**One seed**: these intervals cover the test images only, not the choice of the k subjects "
                     "or the training seed; more seeds widen them.\n")
    write_text_atomic(
        out / "results.md",
        f"# Downstream segmentation\n\n{notes}\n{table}\n"
        + (f"## Do the synthetic pairs help?\n\n{in_words}\n" if in_words else "")
        + "## Paired differences against the baseline\n\n"
        "Mean of (arm - baseline) over seeds x test images, paired per image at the same k and seed; "
        "95 % percentile bootstrap interval resampling seeds and test images. Verdict: the interval "
        "excludes zero on the good side (better), on the bad side (worse), or it does not "
        "(no detectable difference). Dice and false positives in points (x100); HD95 in the table's unit.\n\n"
        f"{verdicts}",
    )
    plot_dice_vs_k(rows, out / "dice_vs_k.png")
    sets = [("real test", real.subset("test") if len(real.subset("test")) else real)]
    if synthetic is not None:
        sets.append(("synthetic", synthetic))
    for cell in cells:  # per-k generators: show the first one's data and samples
        generator = cell.get("generator") or {}
        folder = out / generator.get("folder", "-")  # an absolute folder (a shared store) stays itself
        samples = out / generator.get("synthetic", f"{folder}/synthetic")  # cells before sampling folders
        if (samples / "manifest.csv").is_file():
            sets += [(f"k={cell['k']} generator data", Dataset.open(folder / "data")),
                     (f"k={cell['k']} synthetic", Dataset.open(samples))]
            break
    sections = [
        ("Results", markdown_table_to_html(table) + f"<p>{html.escape(notes)}</p>"),
        ("Do the synthetic pairs help?", f"<pre>{html.escape(in_words or 'no synthetic arm')}</pre>"),
        ("Paired differences", markdown_table_to_html(verdicts)),
        ("Dice vs k", png_tag((out / "dice_vs_k.png").read_bytes(), "Dice vs k")),
    ]
    grid = sample_grid_png(sets)
    with atomic_path(out / "samples.png") as tmp:
        tmp.write_bytes(grid)
    sections.append(("Samples (mask outlines in yellow)", png_tag(grid, "sample grid")))
    write_text_atomic(out / "report.html", html_page("sonosynth downstream experiment", sections))


def _protocol_notes(settings: dict[str, Any], cells: Sequence[dict[str, Any]], command: str) -> str:
    """The experiment in words: where the synthetic pairs came from, the segmenter, convergence."""
    seg = settings["segmentation"]
    if settings.get("generator_per_k"):
        recipe = GeneratorRecipe.from_dict(settings["generator_per_k"])
        sources = ", ".join(f"{n} {name}" for name, n in recipe.mask_sources.items())
        if recipe.hc_range_widen:
            sources += (f" (the shape masks' head circumference over those subjects' range widened by "
                        f"{100 * recipe.hc_range_widen:g} % at both ends)")
        elif recipe.size_range_widen:
            sources += (f" (the shape masks' size over those subjects' range widened by "
                        f"{100 * recipe.size_range_widen:g} % at both ends)")
        if recipe.hard_candidates > 1:
            sources += (f", each the hardest of {recipe.hard_candidates} candidates for a segmenter trained on the "
                        "same k subjects (segmenter-in-the-loop: its lowest Dice kept)")
        train, sd, generate = recipe.train, recipe.stable_diffusion, recipe.generate
        model = f"`{train.model.size}` {train.model.kind} diffusion model"
        if sd is not None:  # the base saw other images, never these patients' annotations
            lora = f" + LoRA rank {sd.lora_rank}" if sd.lora_rank else ""
            model = f"{sd.kind}{lora} fine-tuning of the Stable Diffusion folder `{sd.base}`"
        origin = (
            "Synthetic pairs: **generator per k** (no leak): for every k and seed a "
            f"{model} was trained at {recipe.size} px "
            f"for {(sd or train).max_steps} steps on exactly the k subjects of the real arm"
            + (f", conditioned on {', '.join(train.class_attributes)}"
               if train.class_attributes and sd is None else "")
            + f"; {sources} masks made from those subjects' masks only; sampled with "
            f"{generate.steps} {generate.scheduler or 'dpm++'} steps, "
            f"guidance {generate.guidance_scale}. "
            f"Generators, their data and samples are under `{settings.get('generators', 'generators/')}`.\n"
        )
    elif settings.get("synthetic"):
        origin = (
            f"Synthetic pairs: one dataset for every k (`{settings['synthetic']}`). **Its generator was not trained "
            "on each cell's k subjects and in general saw more real data than the segmenter: this is not a "
            "scarce-data result.** Use `--generator-per-k RECIPE` for the honest protocol.\n"
        )
    else:
        origin = "No synthetic data.\n"
    if settings.get("train_where"):
        origin += (f"**Designed shift**: the k subjects are drawn from, and validation uses, only the pairs where "
                   f"`{settings['train_where']}`; the test split is whole, so part of it is unlike every training "
                   "pair.\n")
    if settings.get("unannotated"):
        count = settings["unannotated"]
        origin += (f"**Unannotated scans**: every cell also has the images of {count} more pool subjects (the next "
                   "ones of the same seeded order, never among its k) without their masks; the generator learns from "
                   "them with the null condition (`unannotated/` in its store folder), and the real+pseudo-labels arms "
                   "self-train on them instead: the matching real arm's segmenter labels them, and a new one trains "
                   "on the real pairs plus those (`pseudo-labels/`), mixed at the synthetic ratio.\n")
    if settings.get("auto_split"):
        origin += ("**Automatic split**: the real dataset had no train/val/test split; this report's is the automatic "
                   "subject-wise one (`--auto-split`), not one recorded in the dataset.\n")
    hc = settings.get("classical") or {}
    classical = ", ".join(f"{k}={v}" for k, v in hc.items())
    unconverged = [c for c in cells if not c.get("converged")]
    convergence = (
        f"Every one of the {len(cells)} segmenters converged (validation Dice stopped improving before the step cap).\n"
        if not unconverged else
        f"**{len(unconverged)} of {len(cells)} segmenters did not converge** (still improving when they stopped: "
        + ", ".join(f"k={c['k']} {c['arm']} seed {c['seed']}" for c in unconverged[:8])
        + (" ..." if len(unconverged) > 8 else "") + "): their rows are not results.\n"
    )
    planned = settings.get("planned_cells", len(cells))
    if len(cells) < planned:
        convergence += (f"**Partial report: {len(cells)} of the {planned} planned cells have finished**; "
                        "rerun the command to continue.\n")
    notes = (
        f"Real data: `{settings['real']}`.\n{origin}"
        f"{_segmenter_note(seg, classical)}\n{convergence}"
        "Metrics on the real test split in the original pixel grid; mean ± sample std over seeds. Dice is "
        "averaged over images whose reference has the structure; the false-positive rate is the share of "
        "images without it where the prediction draws it. HD95 averages images where both maps have the "
        "structure; 'HD95 missed' counts images (per seed) where one of them lacks it.\n"
    )
    if command:
        notes += f"\nCommand: `{command}`\n"
    if settings.get("selection"):
        notes += (f"\n**Selection split**: {100 * float(settings['selection']):g} % of the test subjects are set "
                  "aside for choosing (selection.md); every number here is on the other test subjects.\n")
    versions = sorted({c.get("code") or "not recorded (cells made before cells recorded it)" for c in cells})
    notes += f"\nCode that made the cells: {', '.join(versions)}.\n"
    return notes


def _segmenter_note(seg: dict[str, Any], classical: str) -> str:
    if seg.get("net") == "nnunet":
        return (
            f"Segmenter: nnU-Net v2 `2d` (its own optimiser, batch, patch size and augmentation) on pairs letterboxed "
            f"to {seg['size']} px, up to {seg['max_steps']} iterations in epochs of {seg['val_every']}, stopped after "
            f"{seg['patience']} epochs without a new best EMA pseudo Dice on the real val split (whose weights are "
            f"kept); real+synthetic cases listed so that {seg['synthetic_ratio']} of the draws are synthetic."
        )
    if seg.get("net") == "sam":
        box = ("**boxes from the reference masks** (the source system's protocol: a user has no reference mask, "
               "so these scores are optimistic)" if seg.get("sam_box") == "reference" else
               f"boxes from a MONAI U-Net '{seg.get('net_size')}' trained on the same pairs (the fair protocol)")
        return (
            f"Segmenter: Segment Anything from `{seg.get('weights')}`, image and prompt encoders frozen, mask decoder "
            f"fine-tuned with Dice + cross-entropy on box prompts (jitter 0-{seg.get('box_jitter')} px at SAM's "
            f"input size) on pairs letterboxed to {seg['size']} px, up to {seg['max_steps']} steps, early stopping "
            f"on the real val split; at test time {box}."
        )
    size = seg.get("net_size", seg.get("net"))  # reports made before `net` named the segmenter
    return (
        f"Segmenter: MONAI U-Net '{size}' at {seg['size']} px, up to {seg['max_steps']} steps "
        f"(batch {seg['batch_size']}, lr {seg['learning_rate']}, early stopping on the real val split, patience "
        f"{seg['patience']} x {seg['val_every']} steps), synthetic ratio {seg['synthetic_ratio']} in real+synthetic "
        "batches; `+classical` arms replace the light augmentation by strong classical augmentation (MONAI "
        f"transforms: {classical})."
    )


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
            ax.set_title(shortened(title, 30), fontsize=7, color="red" if r == 0 and row["near_copy"] else "black")
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


def shortened(text: str, width: int = 26) -> str:
    """A picture's caption line that fits its panel, cut in the middle (both ends of an id tell it apart)."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: (keep + 1) // 2] + "…" + text[len(text) - keep // 2:]
