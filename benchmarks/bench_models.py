"""Training-step speed of the size presets against a plain diffusers UNet2DModel baseline.

One training step = forward + backward + AdamW step on a batch of noisy images with their
condition, exactly what training does per step. The baseline is the 6.3M-parameter UNet2DModel
(channels 32/64/128/128, 2 layers per block, attention at the lowest level) the issue measured at
3.7-4.1 s/step on this CPU at 64 px, batch 16. "x faster" is the baseline's seconds per image
divided by the model's, from the same run.

    .venv/bin/python benchmarks/bench_models.py                 # 64 px, batch 16, 3 timed steps
    .venv/bin/python benchmarks/bench_models.py --px 128 --steps 5 --models spade-small,concat-small
"""

from __future__ import annotations

import argparse
import time

import torch

from sonosynth.models import ModelConfig, build_model

NUM_LABELS = 2


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
    """(model, one training step function) for 'baseline' or '<kind>-<size>'."""
    noisy = torch.randn(batch, 1, px, px, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    if name == "baseline":
        model = baseline_unet()
        target = torch.randn(batch, 1, px, px, generator=generator)

        def loss_fn() -> torch.Tensor:
            return torch.nn.functional.mse_loss(model(noisy, t).sample, target)

    else:
        kind, size = name.split("-")
        model = build_model(ModelConfig(kind=kind, size=size, num_labels=NUM_LABELS))
        items = {
            "image": torch.rand(batch, 1, px, px, generator=generator) * 2 - 1,
            "label": torch.randint(0, NUM_LABELS, (batch, px, px), generator=generator),
            "fov": torch.ones(batch, 1, px, px),
        }
        x0, condition, class_labels = model.training_inputs(items)
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


def time_steps(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--models", default="baseline,spade-tiny,spade-small,concat-small,joint-small")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    generator = torch.Generator().manual_seed(0)
    rows = []
    baseline_per_image = None
    for name in args.models.split(","):
        model, step = make_step(name, args.px, args.batch, generator)
        params = sum(p.numel() for p in model.parameters())
        seconds = time_steps(step, args.steps, args.warmup)
        per_image = seconds / args.batch
        if name == "baseline":
            baseline_per_image = per_image
        rows.append((name, params, seconds, args.batch / seconds, per_image))
        del model, step

    table = Table(title=f"training step (fwd+bwd+AdamW), {args.px} px, batch {args.batch}, {args.steps} timed steps, "
                  f"{torch.get_num_threads()} threads")
    for column in ("model", "px", "batch", "params", "s/step", "images/s (train)", "x faster than baseline"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, params, seconds, images_per_s, per_image in rows:
        ratio = f"{baseline_per_image / per_image:.2f}" if baseline_per_image else "-"
        table.add_row(name, str(args.px), str(args.batch), f"{params / 1e6:.2f}M", f"{seconds:.3f}",
                      f"{images_per_s:.1f}", ratio)
    Console().print(table)


if __name__ == "__main__":
    main()
