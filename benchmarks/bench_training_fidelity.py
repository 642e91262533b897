"""Mask fidelity reached per CPU minute of training: whole images vs random patches.

    python benchmarks/bench_training_fidelity.py DATASET SEGRUN --out /tmp/fid/whole --cpu-minutes 15
    python benchmarks/bench_training_fidelity.py DATASET SEGRUN --out /tmp/fid/patch --cpu-minutes 15 --patch-size 32

Trains on the dataset's `train` split and stops once the process has used `--cpu-minutes` of CPU
time (all threads; on an idle machine that is at most as many wall minutes). A checkpoint (with
EMA weights) is kept every `--checkpoint-every` steps. Each checkpoint whose step is a multiple of
`--eval-every` (and the last one) then generates an image for every `test` mask with the few-step
sampler, a segmenter trained on real images (SEGRUN, from `sonosynth segment train`) segments
them, and the Dice against the conditioning mask is the mask fidelity. Prints a table of CPU
minutes, steps and mean Dice; real test images give the ceiling.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path


def train_on_cpu_budget(args: argparse.Namespace) -> Path:
    from sonosynth.diffusion.config import TrainConfig
    from sonosynth.diffusion.train import train
    from sonosynth.models.configs import ModelConfig

    config = TrainConfig(
        dataset=str(args.dataset), model=ModelConfig(size=args.model, kind=args.kind), size=args.size,
        patch_size=args.patch_size, batch_size=args.batch_size, learning_rate=args.lr, max_steps=args.max_steps,
        warmup_steps=50, lr_schedule="constant", checkpoint_every=args.checkpoint_every, keep_checkpoints=1000,
        sample_every=args.checkpoint_every * 4, sample_steps=20, num_samples=6, seed=args.seed,
    )
    budget = args.cpu_minutes * 60.0
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    log = args.out / "cpu_time.csv"
    args.out.mkdir(parents=True, exist_ok=True)
    with open(log, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "cpu_s", "wall_s", "loss"])

        def on_step(step: int, loss: float) -> bool:
            cpu = time.process_time() - start_cpu
            writer.writerow([step, f"{cpu:.1f}", f"{time.perf_counter() - start_wall:.1f}", f"{loss:.5f}"])
            fh.flush()
            return cpu >= budget

        result = train(config, args.out / "run", on_step=on_step)
    print(f"trained {result.step} steps in {time.process_time() - start_cpu:.0f} CPU s, {result.seconds:.0f} wall s")
    return args.out / "run"


def evaluate(args: argparse.Namespace, run: Path) -> list[dict]:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from sonosynth.data.format import Dataset
    from sonosynth.data.torch_dataset import LetterboxedPairs
    from sonosynth.diffusion.config import TrainConfig
    from sonosynth.diffusion.pipeline import MaskToUltrasoundPipeline
    from sonosynth.diffusion.samples import sample_batch
    from sonosynth.synthesis.fidelity import score_samples, segmenter_predictor
    from sonosynth.training import checkpoints as ckpt

    config = TrainConfig.from_yaml(run / "config.yaml")
    config.sample_steps = args.sample_steps
    test = Dataset.open(args.dataset).subset("test")
    pairs = LetterboxedPairs(test, config.size)
    items = [pairs[i] for i in range(min(args.eval_n, len(pairs)))]
    masks = [it["label"].numpy().astype(np.uint8) for it in items]
    predict, num_labels = segmenter_predictor(args.segrun)

    def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
        return [((im[0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy() for im in images]

    real = float(np.mean(score_samples(to_uint8(torch.stack([it["image"] for it in items])), masks, predict,
                                       num_labels)))
    cpu = {}
    with open(args.out / "cpu_time.csv") as fh:
        for row in csv.DictReader(fh):
            cpu[int(row["step"])] = float(row["cpu_s"])
    model = MaskToUltrasoundPipeline.from_pretrained(run).unet
    names = [n for n, _ in model.named_parameters()]
    rows = []
    checkpoints = ckpt.list_checkpoints(run)
    last = checkpoints[-1][0] if checkpoints else None
    for step, path in checkpoints:
        if step % args.eval_every and step != last:
            continue
        ema = load_file(path / "ema.safetensors")
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(ema[name])
        images, _ = sample_batch(model, items, config, seed=args.seed)
        dice = score_samples(to_uint8(images), masks, predict, num_labels)
        rows.append({"step": step, "cpu_min": cpu.get(step, float("nan")) / 60, "dice": float(np.mean(dice)),
                     "dice_median": float(np.median(dice)), "real_dice": real})
        print(json.dumps(rows[-1]), flush=True)
    assert names  # the model has parameters to load
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("segrun", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="small")
    parser.add_argument("--kind", default="spade")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--cpu-minutes", type=float, default=15.0)
    parser.add_argument("--max-steps", type=int, default=100000)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--eval-n", type=int, default=24)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100, help="score checkpoints whose step is a multiple")
    parser.add_argument("--eval-only", action="store_true")
    args = parser.parse_args()

    run = args.out / "run" if args.eval_only else train_on_cpu_budget(args)
    rows = evaluate(args, run)
    with open(args.out / "fidelity.json", "w") as fh:
        json.dump(rows, fh, indent=1)
    print()
    print("| step | CPU min | mask Dice (mean) | median | real images |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['cpu_min']:.1f} | {r['dice']:.3f} | {r['dice_median']:.3f} | {r['real_dice']:.3f} |")


if __name__ == "__main__":
    main()
