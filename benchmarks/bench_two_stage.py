"""Two-stage (draft + SDEdit refinement) vs one-stage sampling at equal cost (network evaluations).

For each budget B (NFE per image) the same masks are sampled:
- one-stage: B steps of the model's sampler;
- two-stage: B/2 draft steps, then re-noise and B/2 refinement steps (strength 0.5 or 0.3);
- optionally a finer second stage (2x side), which costs more per evaluation (reported, not equal cost).
Mask fidelity is the Dice between each conditioning mask and a segmenter's prediction on the
image; realism is approximated by the 1-D Wasserstein distance between the intensity histograms
(inside the field of view) of generated and real images of the same masks. Masks come from the
source's test split (else val, else all) so the segmenter has not seen them.

    python benchmarks/bench_two_stage.py RUN --source DATASET --segmenter SEGRUN [--n 16] [--budgets 10 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from sonosynth.data.format import Dataset
from sonosynth.synthesis.fidelity import score_samples, segmenter_predictor
from sonosynth.synthesis.generate import load_source_pairs
from sonosynth.synthesis.grid import from_square, reduce_image, to_square
from sonosynth.synthesis.refine import TwoStageConfig, two_stage_sample
from sonosynth.synthesis.sampling import load_synthesis_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--source", required=True)
    parser.add_argument("--segmenter", required=True)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--finer", action="store_true", help="also try a 2x finer second stage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = load_synthesis_model(args.run, args.scheduler)
    predict, num_labels = segmenter_predictor(args.segmenter)
    dataset = Dataset.open(args.source)
    for split in ("test", "val", ""):
        chosen = dataset.subset(split=split) if split else dataset
        if len(chosen):
            break
    chosen = chosen.subset(ids=[r.id for r in chosen.records[: args.n]])
    pairs = load_source_pairs(chosen, model.size)
    real = [reduce_image(s.image, model.size) for s in chosen]
    masks = [p.mask for p in pairs]
    shapes = [m.shape for m in masks]
    labels = to_square(masks, model.size).long()
    fov = to_square([p.fov for p in pairs], model.size)[:, None]

    def generators():
        return [torch.Generator().manual_seed(args.seed + i) for i in range(len(masks))]

    def measure(name: str, nfe: str, sample) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            images = sample()
        seconds = (time.perf_counter() - start) / len(masks)
        if images.shape[-1] != model.size:  # finer stage 2: back to the model grid for comparable scoring
            images = torch.nn.functional.interpolate(images, size=(model.size, model.size), mode="area")
        unit = ((images[:, 0] + 1) / 2).clamp(0, 1)
        crops = from_square(unit, shapes)
        dice = np.array(score_samples(crops, masks, predict, num_labels))
        w = np.mean([wasserstein_distance(g[p.fov > 0], r[p.fov > 0])
                     for g, r, p in zip(crops, real, pairs, strict=True)])
        print(f"| {name:<34} | {nfe:>5} | {dice.mean():.3f} ± {dice.std():.3f} | {w:8.2f} | {seconds:6.2f} |",
              flush=True)

    print(f"model {args.run} ({model.kind}, {model.size} px), sampler {type(model.pipe.scheduler).__name__}, "
          f"{len(masks)} masks from {args.source}, segmenter {args.segmenter}")
    print("| method                             |   NFE | mask Dice (mean ± sd) | intensity W1 | s/image |")
    print("|---|---|---|---|---|")
    real_dice = np.array(score_samples(real, masks, predict, num_labels))
    print(f"| real images (segmenter ceiling)    |     - | {real_dice.mean():.3f} ± {real_dice.std():.3f} "
          "|     0.00 |      - |")
    for budget in args.budgets:
        measure("one-stage", str(budget), lambda b=budget: model.pipe(
            labels=labels, fov=fov, num_inference_steps=b, guidance_scale=args.guidance, generator=generators(),
            output_type="pt").images)
        half = max(1, budget // 2)
        for strength in (0.5, 0.3):
            config = TwoStageConfig(stage1_steps=half, stage2_steps=max(1, round((budget - half) / strength)),
                                    strength=strength, guidance_scale=args.guidance)
            measure(f"two-stage {half}+refine s={strength}", str(config.evaluations),
                    lambda c=config: two_stage_sample(model, labels, fov, None, c, generators()))
        if args.finer:
            config = TwoStageConfig(stage1_steps=half, stage2_steps=2 * (budget - half), strength=0.5,
                                    stage2_size=2 * model.size, guidance_scale=args.guidance)
            measure(f"two-stage {half}+refine at 2x side", f"{config.evaluations}*", lambda c=config: two_stage_sample(
                model, labels, fov, None, c, generators()))
    if args.finer:
        print("* the 2x-side second stage costs ~4x per evaluation: not an equal-cost comparison")


if __name__ == "__main__":
    main()
