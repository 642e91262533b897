"""Training-step speed of the size presets against a plain diffusers UNet2DModel baseline.

One training step = forward + backward + AdamW step on a batch of noisy images with their
condition, exactly what training does per step. The baseline is the 6.3M-parameter UNet2DModel
(channels 32/64/128/128, 2 layers per block, attention at the lowest level) the issue measured at
3.7-4.1 s/step on this CPU at 64 px, batch 16. "x faster" is the baseline's seconds per image
divided by the model's, from the same run; models are timed in interleaved rounds and the best
round counts, so load from other processes on a shared CPU hits all of them alike.

    .venv/bin/python benchmarks/bench_models.py                 # 64 px, batch 16, 3 timed steps
    .venv/bin/python benchmarks/bench_models.py --px 128 --steps 5 --models spade-small,concat-small
"""

from __future__ import annotations

import argparse
import time

import torch

from sonosynth.diffusion.data import training_inputs
from sonosynth.models import ModelConfig, build_model

NUM_LABELS = 2
DEFAULT_MODELS = "baseline,spade-small,spade-small-monai,concat-small,joint-small"


def baseline_unet() -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=64,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


def make_step(name: str, px: int, batch: int, generator: torch.Generator):
    """(model, one training step function) for 'baseline' or '<kind>-<size>[-<spade block>]'."""
    noisy = torch.randn(batch, 1, px, px, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    if name == "baseline":
        model = baseline_unet()
        target = torch.randn(batch, 1, px, px, generator=generator)

        def loss_fn() -> torch.Tensor:
            return torch.nn.functional.mse_loss(model(noisy, t).sample, target)

    else:
        kind, size, *block = name.split("-")
        overrides = {"spade_block": block[0]} if block else {}
        model = build_model(ModelConfig(kind=kind, size=size, num_labels=NUM_LABELS, **overrides))
        items = {
            "image": torch.rand(batch, 1, px, px, generator=generator) * 2 - 1,
            "label": torch.randint(0, NUM_LABELS, (batch, px, px), generator=generator),
            "fov": torch.ones(batch, 1, px, px),
        }
        x0, condition, class_labels = training_inputs(model, items)
        noisy = torch.randn(x0.shape, generator=generator)
        target = torch.randn(x0.shape, generator=generator)

        def loss_fn() -> torch.Tensor:
            return torch.nn.functional.mse_loss(model(noisy, t, condition, class_labels), target)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()

    return model, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (one step of every model each)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    generator = torch.Generator().manual_seed(0)
    names = args.models.split(",")
    built = {name: make_step(name, args.px, args.batch, generator) for name in names}
    for _, step in built.values():
        for _ in range(args.warmup):
            step()
    # Round-robin, one step of each model per round, best round per model: the CPU is shared, and
    # interleaving exposes every model to the same load swings instead of timing them one after another.
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.steps):
        for name, (_, step) in built.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    rows = []
    baseline_per_image = min(times["baseline"]) / args.batch if "baseline" in times else None
    for name, (model, _) in built.items():
        seconds = min(times[name])
        params = sum(p.numel() for p in model.parameters())
        rows.append((name, params, seconds, args.batch / seconds, seconds / args.batch, max(times[name])))

    table = Table(title=f"training step (fwd+bwd+AdamW), {args.px} px, batch {args.batch}, best of {args.steps} "
                  f"interleaved rounds, {torch.get_num_threads()} threads")
    columns = ("model", "px", "batch", "params", "s/step", "(worst)", "images/s (train)", "x faster than baseline")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, params, seconds, images_per_s, per_image, worst in rows:
        ratio = f"{baseline_per_image / per_image:.2f}" if baseline_per_image else "-"
        table.add_row(name, str(args.px), str(args.batch), f"{params / 1e6:.2f}M", f"{seconds:.3f}", f"{worst:.3f}",
                      f"{images_per_s:.1f}", ratio)
    Console().print(table)


if __name__ == "__main__":
    main()
