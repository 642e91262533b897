"""Example grid and numbers for the three mask sources on a dataset (e.g. HC18).

Without a model: rows of `train`, `deform` and `shape` masks (plus `shape` at target head
circumferences), with how often each source had to redraw or fall back and how close sampled
circumferences are to their targets. With RUN (and SEGRUN): each mask next to the image generated
from it, and the mean mask-fidelity Dice per source.

    python benchmarks/synthesis_examples.py --source DATASET --out docs/images/synthesis_hc18.png \
        [--run RUN --segmenter SEGRUN --steps 25] [--n 6] [--size 128] [--hc 120 200 280]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sonosynth.data.ellipse import head_circumference_mm
from sonosynth.data.format import Dataset
from sonosynth.synthesis.generate import GenerateConfig, MaskSource, load_source_pairs


def tile(arrays: list[np.ndarray], label: str, cell: int) -> Image.Image:
    """One row: a caption then the arrays (uint8 or label maps), each letterboxed into a cell."""
    row = Image.new("L", (cell * (len(arrays) + 1), cell), 40)
    ImageDraw.Draw(row).multiline_text((4, 4), label, fill=255)
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        if a.dtype != np.uint8 or a.max() < 16:
            a = (a.astype(np.float32) / max(1, a.max()) * 255).astype(np.uint8)
        im = Image.fromarray(a)
        im.thumbnail((cell - 2, cell - 2))
        row.paste(im, ((i + 1) * cell + (cell - im.width) // 2, (cell - im.height) // 2))
    return row


def validity_stats(pairs, shape_model, rng: np.random.Generator, n: int) -> None:
    """How often deform/shape draws are redrawn, fall back or break the anatomy rules; target-HC accuracy."""
    from sonosynth.synthesis.masks import AnatomyRules, deform_mask

    for source in ("deform", "shape"):
        start, fell_back, attempts, broken = time.perf_counter(), 0, [], 0
        for _ in range(n):
            if source == "deform":
                p = pairs[int(rng.integers(len(pairs)))]
                result, rules = deform_mask(p.mask, rng), AnatomyRules.of(p.mask)
            else:
                result, rules = shape_model.sample(rng, shape=pairs[0].mask.shape), shape_model.rules
            fell_back += result.fell_back
            attempts.append(result.attempts)
            broken += bool(rules.violations(result.mask))
        ms = (time.perf_counter() - start) / n * 1000
        print(f"{source}: {n} masks, {fell_back} fell back, {np.mean(attempts):.2f} draws/mask, "
              f"{broken} rule violations, {ms:.1f} ms/mask")
    errors, spacings = [], []
    targets = np.linspace(50, 350, 61)
    for target in targets:
        sample = shape_model.sample(rng, target_hc_mm=float(target), shape=pairs[0].mask.shape)
        errors.append(abs(head_circumference_mm(sample.mask, sample.spacing_mm) - target) / target)
        spacings.append(sample.spacing_mm)
    print(f"target HC 50..350 mm ({len(targets)} targets): relative error median {np.median(errors):.4f}, "
          f"worst {np.max(errors):.4f}; pixel sizes {min(spacings):.3f}-{max(spacings):.3f} mm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--run")
    parser.add_argument("--segmenter")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--size", type=int, default=128, help="grid size without a model (else the model's)")
    parser.add_argument("--hc", type=float, nargs="*", default=[120.0, 200.0, 280.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stats", type=int, default=0, help="no model: validate N draws per source")
    args = parser.parse_args()

    dataset = Dataset.open(args.source).select("auto", what="pairs to take masks from")
    rows: list[Image.Image] = []
    cell = 140
    if args.run:
        from sonosynth.synthesis.fidelity import segmenter_predictor
        from sonosynth.synthesis.generate import generate_dataset

        predictor = segmenter_predictor(args.segmenter)[0] if args.segmenter else None
        with tempfile.TemporaryDirectory() as tmp:
            for source in ("train", "deform", "shape"):
                config = GenerateConfig(mask_source=source, n=args.n, steps=args.steps, seed=args.seed,
                                        filter_dice=0.0 if predictor else None)
                out = generate_dataset(args.run, args.source, Path(tmp) / source, config, predictor=predictor,
                                       progress=False)
                synth = Dataset.open(out)
                scores = [float(r.extra["fidelity_dice"]) for r in synth.records if r.extra.get("fidelity_dice")]
                fidelity = f"Dice {np.mean(scores):.3f}" if scores else "no segmenter"
                print(f"| {source} | {len(synth)} | {fidelity} |")
                rows.append(tile([s.mask for s in synth], f"{source}\nmasks", cell))
                rows.append(tile([s.image for s in synth], f"{source}\nimages\n{fidelity}", cell))
    else:
        rng = np.random.default_rng(args.seed)
        start = time.perf_counter()
        pairs = load_source_pairs(dataset, args.size, progress=True)
        print(f"read {len(pairs)} masks at {args.size} px in {time.perf_counter() - start:.1f} s")
        print("| source | masks | s/mask | redrawn or fell back |")
        print("|---|---|---|---|")
        for source in ("train", "deform", "shape"):
            start = time.perf_counter()
            masks = MaskSource(pairs, GenerateConfig(mask_source=source, n=args.n))
            candidates = [masks.draw(rng) for _ in range(args.n)]
            seconds = (time.perf_counter() - start) / args.n
            fallbacks = sum(c.fell_back for c in candidates)
            print(f"| {source} | {args.n} | {seconds:.3f} | {fallbacks} fell back |")
            rows.append(tile([c.mask for c in candidates], f"{source}", cell))
        if args.hc:
            from sonosynth.synthesis.masks import ShapeModel

            model = ShapeModel.fit([p.mask for p in pairs], [p.spacing_mm for p in pairs])
            masks, errors = [], []
            for target in args.hc:
                for _ in range(max(1, args.n // len(args.hc))):
                    sample = model.sample(rng, target_hc_mm=target, shape=pairs[0].mask.shape)
                    measured = head_circumference_mm(sample.mask, sample.spacing_mm)
                    errors.append(abs(measured - target) / target)
                    masks.append(sample.mask)
            print(f"shape at target HC {args.hc} mm: {len(errors)} masks, relative error median "
                  f"{np.median(errors):.4f}, worst {np.max(errors):.4f}")
            if args.stats:
                validity_stats(pairs, model, rng, args.stats)
            rows.append(tile(masks, "shape at\nHC " + "/".join(f"{h:g}" for h in args.hc) + " mm", cell))
    grid = Image.new("L", (max(r.width for r in rows), sum(r.height for r in rows)), 0)
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"grid written to {args.out}")


if __name__ == "__main__":
    main()
