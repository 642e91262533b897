"""Hardware efficiency: achieved GFLOP/s of training and sampling as a fraction of a large float32 matmul's.

Issue 15's efficiency target. In one run, on the same machine and thread count, this measures
- a reference: a large float32 matrix multiply (2 n^3 FLOPs per call), about the best this CPU does;
- five workloads with untrained weights (speed only), each counted with `FlopCounterMode` (convolutions,
  matmuls, attention: the network's useful arithmetic; norms and activations count as zero) and timed
  (median of `--repeats` after a warm-up):
  `train latent-256` (one AdamW step of the `small` spade denoiser on 4 x 64 x 64 latents, 256 px condition),
  `train pixel-64` (the same denoiser on 1 x 64 x 64 images), `encode 256` (the default 4x autoencoder's
  encoder, what `LatentCache` avoids repeating), `sample step latent-256` (one guided denoiser call: the
  conditional and null halves in one batch of 2 B; again with the condition afresh at every call, which
  shows what keeping the condition's terms across steps saves) and `decode 256` (the autoencoder's decoder).
A low fraction of the matmul's GFLOP/s is time not spent on arithmetic; the profile tables (top ops by self
CPU time) show where it goes instead: convolutions, group norm, SiLU, copies, resizes.

    .venv/bin/python benchmarks/bench_efficiency.py
    .venv/bin/python benchmarks/bench_efficiency.py --threads 2
    .venv/bin/python benchmarks/bench_efficiency.py --quick --no-profile   # smoke run, seconds
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from sonosynth.autoencoder.config import AutoencoderConfig
from sonosynth.autoencoder.model import build_autoencoder, latent_factor
from sonosynth.diffusion.data import encode_latents
from sonosynth.models import ModelConfig, build_model


@dataclass
class Workload:
    name: str
    run: Callable[[], object]


def seconds_per_call(run: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(run: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def matmul_gflops(n: int, repeats: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / seconds_per_call(lambda: a @ b, repeats, warmup=2) / 1e9


def labels_of(batch: int, px: int) -> torch.Tensor:
    """(B, px, px) label maps: an ellipse (label 1) with a rectangle (label 1) beside it."""
    yy, xx = torch.meshgrid(torch.arange(px), torch.arange(px), indexing="ij")
    inside = ((yy - px / 2) / (0.3 * px)) ** 2 + ((xx - px / 2.5) / (0.2 * px)) ** 2 <= 1
    inside[px // 5: px // 3, 2 * px // 3: 5 * px // 6] = True
    return inside.long().expand(batch, px, px).clone()


def train_step(model: torch.nn.Module, sample: torch.Tensor, condition: torch.Tensor) -> Callable[[], object]:
    """One optimizer step as `train` runs it (forward, MSE on a v-like target, backward, AdamW), without EMA."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(sample.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (sample.shape[0],), generator=generator)

    def run() -> None:
        loss = F.mse_loss(model(sample, timesteps, condition).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def sample_step(model: torch.nn.Module, latents: torch.Tensor, condition: torch.Tensor, fresh: bool = False
                ) -> Callable[[], object]:
    """One guided denoiser call as the pipeline's loop makes it: conditional and null halves in one batch.

    A loop passes the same condition tensor at every step, so the model keeps what it computes from the
    condition alone (`SameConditionMemo`); `fresh` passes a new copy each call, as if it could not."""
    model.eval()
    both = torch.cat([condition, model.null_condition(condition)])
    x_in = torch.cat([latents, latents])
    timesteps = torch.full((x_in.shape[0],), 500)

    def run() -> object:
        with torch.no_grad():
            return model(x_in, timesteps, both.clone() if fresh else both)

    return run


def workloads(batch: int, px: int, pixel_px: int) -> list[Workload]:
    generator = torch.Generator().manual_seed(0)
    vae = build_autoencoder(AutoencoderConfig(size=px)).eval()
    factor, channels = latent_factor(vae), vae.config.latent_channels
    side = px // factor
    latent_model = build_model(ModelConfig(kind="spade", size="small", num_labels=2, latent_channels=channels,
                                           latent_factor=factor))
    pixel_model = build_model(ModelConfig(kind="spade", size="small", num_labels=2))
    condition = latent_model.make_condition(labels_of(batch, px))
    pixel_condition = pixel_model.make_condition(labels_of(batch, pixel_px))
    latents = torch.randn(batch, channels, side, side, generator=generator)
    images = torch.rand(batch, 1, px, px, generator=generator) * 2 - 1
    pixels = torch.rand(batch, 1, pixel_px, pixel_px, generator=generator) * 2 - 1
    scale = vae.config.scaling_factor

    def decode() -> object:
        with torch.no_grad():
            return vae.decode(latents / scale).sample

    # The sampling model is a copy, so the training steps above it do not change what it computes.
    sampling_model = build_model(latent_model.model_config).eval()
    return [
        Workload(f"train latent-{px}", train_step(latent_model, latents, condition)),
        Workload(f"train pixel-{pixel_px}", train_step(pixel_model, pixels, pixel_condition)),
        Workload(f"encode {px}", lambda: encode_latents(vae, images)),
        Workload(f"sample step latent-{px}", sample_step(sampling_model, latents, condition)),
        Workload(f"sample step latent-{px}, condition afresh", sample_step(sampling_model, latents, condition,
                                                                          fresh=True)),
        Workload(f"decode {px}", decode),
    ]


def profile_table(name: str, run: Callable[[], object], top: int) -> str:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)  # microseconds
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    lines = [f"| {name}: op ({total / 1e3:.0f} ms self CPU in all) | calls | self ms | share |", "|---|---|---|---|"]
    for e in events[:top]:
        lines.append(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e3:.1f} | "
                     f"{100 * e.self_cpu_time_total / total:.1f}% |")
    rest = sum(e.self_cpu_time_total for e in events[top:])
    lines.append(f"| (other {len(events) - top} ops) | | {rest / 1e3:.1f} | {100 * rest / total:.1f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per workload (median)")
    parser.add_argument("--matmul", type=int, default=2048, help="side n of the reference n x n float32 matmul")
    parser.add_argument("--px", type=int, default=256, help="image side of the latent workloads")
    parser.add_argument("--pixel-px", type=int, default=64, help="image side of the pixel-space training step")
    parser.add_argument("--top", type=int, default=8, help="ops per profile table")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (batch 2, matmul 512, 64 px)")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.matmul, args.px, args.pixel_px, args.repeats = 2, 512, 64, 32, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    reference = matmul_gflops(args.matmul, max(args.repeats, 3))
    rows, tables = [], []
    for workload in workloads(args.batch, args.px, args.pixel_px):
        workload.run()  # a first call, so the count is of a steady-state call (what a loop repeats)
        flops = count_flops(workload.run)
        seconds = seconds_per_call(workload.run, args.repeats)
        rows.append((workload.name, flops / 1e9, seconds))
        print(f"{workload.name}: {seconds:.3f} s", flush=True)
        if args.profile:
            tables.append(profile_table(workload.name, workload.run, args.top))

    print()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"median of {args.repeats}, {datetime.date.today().isoformat()}")
    print()
    print(f"| workload | GFLOP per call | s per call | GFLOP/s | of matmul ({reference:.1f} GFLOP/s, "
          f"n = {args.matmul}) |")
    print("|---|---|---|---|---|")
    for name, gflop, seconds in rows:
        print(f"| {name} | {gflop:.2f} | {seconds:.3f} | {gflop / seconds:.1f} | {gflop / seconds / reference:.0%} |")
    for table in tables:
        print()
        print(table)


if __name__ == "__main__":
    main()
