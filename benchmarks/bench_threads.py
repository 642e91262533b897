"""One process with all the cores' threads against one process per core with one thread each (issue 36).

    python benchmarks/bench_threads.py [--cores 2] [--seconds 20]

For each workload of a 64 px downstream cell, on random tensors of its sizes: a generator's training step
(`small` spade denoiser, batch 8, v-prediction loss, AdamW), sampling (a guided 20-step DPM-Solver++ batch of 8
through the product's pipeline) and a U-Net segmenter's training step (`small`, batch 8, AdamW): the work done
per second by (a) one process with `--cores` torch threads and (b) `--cores` processes at once with one thread
each (their rates summed). Run it on an idle machine; it prints a Markdown table whose last column is the ratio
(b) / (a). `evaluate downstream --workers` runs seeds in processes (layout b).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from collections.abc import Callable

WORKLOADS = ("generator step", "sampling 20 guided steps", "segmenter step")


def _workload(name: str) -> Callable[[], None]:
    """A callable doing one unit of `name`'s work (built once, outside the timing)."""
    import torch

    from sonosynth.models.configs import ModelConfig
    from sonosynth.models.denoiser import build_model

    torch.manual_seed(0)
    labels, fov = torch.randint(0, 2, (8, 64, 64)), torch.ones(8, 1, 64, 64)
    if name == "segmenter step":
        from sonosynth.segmentation.nets import build_unet

        net = build_unet("small", 2)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
        images = torch.randn(8, 1, 64, 64)

        def segmenter_step() -> None:
            loss = torch.nn.functional.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return segmenter_step
    model = build_model(ModelConfig(size="small", kind="spade", num_labels=2))
    if name == "generator step":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x0 = torch.randn(8, 1, 64, 64)
        condition = model.make_condition(labels, fov=fov)

        def generator_step() -> None:
            loss = (model(torch.randn_like(x0), torch.randint(0, 1000, (8,)), condition) - x0).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return generator_step
    if name == "sampling 20 guided steps":
        from sonosynth.diffusion.config import TrainConfig
        from sonosynth.diffusion.samples import make_pipeline

        pipe = make_pipeline(model.eval(), TrainConfig(size=64))
        pipe.set_progress_bar_config(disable=True)

        def sample() -> None:
            pipe(labels, fov=fov, num_inference_steps=20, guidance_scale=1.5, output_type="pt")
        return sample
    raise ValueError(name)


def _rate(name: str, threads: int, seconds: float, start: float, out: mp.Queue) -> None:
    """Units of `name` per second in this process with `threads` threads, timed from `start` (a shared clock)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    work = _workload(name)
    work()  # warm-up: allocation, first-call costs
    while time.time() < start:
        time.sleep(0.01)
    began, done = time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        work()
        done += 1
    out.put(done / (time.perf_counter() - began))


def measure(name: str, processes: int, threads: int, seconds: float) -> float:
    """The summed rate of `processes` processes running `name` at once, `threads` threads each."""
    context = mp.get_context("spawn")
    out = context.Queue()
    start = time.time() + 30  # after every process has built its workload
    workers = [context.Process(target=_rate, args=(name, threads, seconds, start, out)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    rates = [out.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    args = parser.parse_args()
    print(f"| workload (64 px, batch 8) | 1 process x {args.cores} threads (units/s) | {args.cores} processes x 1 "
          "thread (units/s, summed) | processes / threads |")
    print("|---|---|---|---|")
    for name in args.workloads:
        threads = measure(name, 1, args.cores, args.seconds)
        processes = measure(name, args.cores, 1, args.seconds)
        print(f"| {name} | {threads:.2f} | {processes:.2f} | {processes / threads:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
