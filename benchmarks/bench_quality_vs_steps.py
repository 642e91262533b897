"""Mask fidelity versus sampling steps: how few steps suffice?

    python benchmarks/bench_quality_vs_steps.py RUN MASKS SEGRUN --out /tmp/qvs --seeds 0,1 \
        --settings dpm++:10,dpm++:25,dpm++:50,ddim:25,ddim:50,ddpm:1000

For every seed and setting (scheduler:steps) the trained model RUN generates one image per mask of
MASKS' `--split` (the same seed per mask in every setting, so the comparison is paired), a
segmenter trained on real images (SEGRUN) segments them, and the Dice against the conditioning
mask is the mask fidelity. The table gives mean Dice, the paired difference to the reference
setting (the last one, by default the published 1000-step DDPM) of the same seed, pooled over
seeds with a 95 % bootstrap interval that resamples masks, per seed, and the fastest sampling time
over seeds. Real images of the same split give the ceiling. Samples are kept under
--out/seed-S/SETTING (a rerun skips settings already sampled), so they can be inspected afterwards.
`--grid PNG` also writes rows of (mask | one sample per setting | real image) for the first masks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def fidelity(segrun: Path, dataset_root: Path) -> dict[str, float]:
    from sonosynth.data.format import Dataset
    from sonosynth.evaluation.quality import mask_fidelity

    result = mask_fidelity(segrun, Dataset.open(dataset_root))
    return {p["id"]: p["fidelity_dice"] for p in result["per_image"]}


def paired_interval(diff: np.ndarray, seed: int = 0, rounds: int = 10_000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = rng.choice(diff, size=(rounds, len(diff)), replace=True).mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def write_grid(path: Path, masks: Path, out: Path, names: list[str], ids: list[str], rows: int = 4,
               width: int = 160) -> None:
    """Rows of (mask | each setting's sample | real image), the same source mask per row, side by side."""
    from PIL import Image

    from sonosynth.data.format import Dataset

    shown = ids[:rows]
    generated = {}
    for name in names:  # load only the samples shown, keyed by their source mask
        dataset = Dataset.open(out / name)
        position = {r.extra.get("source_id", r.id): i for i, r in enumerate(dataset.records)}
        generated[name] = {source: dataset[position[source]].image for source in shown}
    real = Dataset.open(masks)
    position = {r.id: i for i, r in enumerate(real.records)}

    def tile(array: np.ndarray, resample: int) -> Image.Image:
        image = Image.fromarray(array.astype(np.uint8))
        return image.resize((width, round(width * array.shape[0] / array.shape[1])), resample)

    tiles = []
    for source in shown:
        pair = real[position[source]]
        real_image = pair.image if pair.image.ndim == 2 else pair.image[..., 0]
        row = [tile((pair.mask > 0) * 255, Image.NEAREST)]
        row += [tile(generated[name][source], Image.BILINEAR) for name in names]
        row.append(tile(real_image, Image.BILINEAR))
        tiles.append(row)
    height = max(t.height for row in tiles for t in row)
    picture = Image.new("L", (width * len(tiles[0]), height * len(tiles)))
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            picture.paste(t, (c * width, r * height))
    picture.save(path)
    print(f"grid: {path} (columns: mask | {' | '.join(names)} | real image)")


def sample_and_score(args: argparse.Namespace, seed: int, settings: list[tuple[str, int]]) -> tuple[dict, dict]:
    """Per setting: {source mask id: Dice} and the sampling seconds, for one seed (folder out/seed-S)."""
    from sonosynth.data.format import Dataset
    from sonosynth.synthesis.generate import GenerateConfig, generate_dataset

    out = args.out / f"seed-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    scores: dict[str, dict[str, float]] = {}
    for scheduler, steps in settings:
        name = f"{scheduler}-{steps}"
        folder = out / name
        if not (folder / "manifest.csv").is_file():
            config = GenerateConfig(
                mask_source="train", split=args.split, n=args.n, scheduler=scheduler, steps=steps,
                guidance_scale=args.guidance, seed=seed, batch_size=args.batch_size, output_size="source",
                device="cpu",
            )
            start = time.perf_counter()
            generate_dataset(args.run, args.masks, folder, config, overwrite=True, command="bench_quality_vs_steps")
            timings[name] = time.perf_counter() - start
            timings_path.write_text(json.dumps(timings, indent=2))
        # ids of generated pairs are sample-<i>; key them by their source mask instead
        generated = Dataset.open(folder)
        by_sample = fidelity(args.segrun, folder)
        scores[name] = {r.extra.get("source_id", r.id): by_sample[r.id] for r in generated.records}
    return scores, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("masks", type=Path)
    parser.add_argument("segrun", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--settings", default="dpm++:10,dpm++:25,dpm++:50,ddpm:1000")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=None, help="first N masks of the split (default all)")
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--seeds", default="0", help="comma-separated; each gives every image new noise")
    parser.add_argument("--grid", type=Path, default=None, help="also write a PNG of samples per setting")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from sonosynth.data.format import Dataset

    settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.settings.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {seed: sample_and_score(args, seed, settings) for seed in seeds}
    names = [f"{scheduler}-{steps}" for scheduler, steps in settings]
    reference = names[-1]
    ids = sorted(runs[seeds[0]][0][reference])

    # Dice per setting as a (seeds, masks) array
    dice = {name: np.array([[runs[seed][0][name][i] for i in ids] for seed in seeds]) for name in names}

    real = Dataset.open(args.masks).select(args.split)
    real_ids = [r.id for r in real.records][: args.n]
    real_scores = fidelity(args.segrun, args.masks)
    title = (f"mask fidelity vs sampling steps ({len(ids)} {args.split} masks x {len(seeds)} seeds, guidance "
             f"{args.guidance}; Δ in Dice points vs {reference} of the same seed, 95% CI by resampling masks)")
    table = Table(title=title)
    columns = ["setting", "mean Dice", "Δ pooled", "95% CI", *(f"Δ seed {s}" for s in seeds), "s/image (best)"]
    for column in columns:
        table.add_column(column, justify="right")
    rows = []
    for name in names:
        diff = (dice[name] - dice[reference]) * 100  # (seeds, masks)
        low, high = paired_interval(diff.mean(axis=0)) if name != reference else (0.0, 0.0)
        per_seed = [float(d.mean()) for d in diff]
        seconds = min(runs[seed][1].get(name, float("nan")) for seed in seeds) / len(ids)
        rows.append({"setting": name, "mean_dice": float(dice[name].mean()), "delta_pts": float(diff.mean()),
                     "ci_low": low, "ci_high": high, "delta_pts_per_seed": dict(zip(seeds, per_seed, strict=True)),
                     "s_per_image": seconds})
        table.add_row(name, f"{dice[name].mean():.4f}", f"{diff.mean():+.2f}", f"[{low:+.2f}, {high:+.2f}]",
                      *(f"{d:+.2f}" for d in per_seed), f"{seconds:.2f}")
    real_values = np.array([real_scores[i] for i in real_ids])
    table.add_row("real images", f"{real_values.mean():.4f}", "", "", *("" for _ in seeds), "")
    rows.append({"setting": "real", "mean_dice": float(real_values.mean()), "std": float(real_values.std())})
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    Console().print(table)
    if args.grid is not None:
        write_grid(args.grid, args.masks, args.out / f"seed-{seeds[-1]}", names, ids)


if __name__ == "__main__":
    main()
