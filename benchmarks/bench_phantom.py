"""Phantom generation speed: images per second (simulation + anatomy, and full dataset writing).

    python benchmarks/bench_phantom.py [--size 256] [--n 60] [--workers 2]

Cases are independent (each from its own (seed, index) generator), so `--workers` processes each
simulate a share; numbers are wall-clock on this machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sonosynth.phantom.anatomy import DOMAINS
from sonosynth.phantom.cases import generate_case
from sonosynth.phantom.dataset import case_rng, write_phantom_dataset


def _simulate(args: tuple[str, int, int, int]) -> int:
    domain, size, start, stop = args
    for index in range(start, stop):
        generate_case(domain, size, case_rng(0, index))
    return stop - start


def images_per_second(domain: str, size: int, n: int, workers: int) -> float:
    _simulate((domain, size, 10_000, 10_005))  # warm caches and imports
    shares = [(domain, size, n * w // workers, n * (w + 1) // workers) for w in range(workers)]
    start = time.perf_counter()
    if workers == 1:
        done = _simulate(shares[0])
    else:
        with ProcessPoolExecutor(workers) as pool:
            done = sum(pool.map(_simulate, shares))
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs visible; {args.n} images of {args.size}x{args.size} per domain\n")
    print(f"| domain | images/s, 1 process | images/s, {args.workers} processes | dataset writing (1 process) |")
    print("|---|---|---|---|")
    for domain in DOMAINS:
        single = images_per_second(domain, args.size, args.n, 1)
        multi = images_per_second(domain, args.size, args.n, args.workers)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_phantom_dataset(Path(tmp) / "ds", domain, args.n, args.size, seed=0)
            writing = args.n / (time.perf_counter() - start)
        print(f"| {domain} | {single:.1f} | {multi:.1f} | {writing:.1f} |")


if __name__ == "__main__":
    main()
