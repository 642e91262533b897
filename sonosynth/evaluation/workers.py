"""Cells in parallel: an experiment's seeds shared among worker processes on one machine.

A cell's generator belongs to its (k, seed), so cells of different seeds share nothing but the report folder's
`cells/` (one file each) and read-only data: each worker runs `run_downstream` on its seeds (`only_seeds`), with
`threads` torch threads, and the parent writes the report once they are done. On small networks two processes
with one thread each usually do more work per second than one process with two threads (intra-op parallelism
has little to split in a 64 px convolution): on our idle 2-core machine 1.58x for a generator's training step,
1.51x for the U-Net's, 1.19x for sampling (benchmarks/bench_threads.py, docs/training.md), so `--workers 0`
(one process per core of the budget, the default of `evaluate downstream`) is what the runner picks.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from sonosynth.errors import SonosynthError


def seed_groups(seeds: list[int], workers: int) -> list[list[int]]:
    """`seeds` dealt round-robin to at most `workers` non-empty groups (each group one process)."""
    groups = [seeds[i::workers] for i in range(max(1, workers))]
    return [g for g in groups if g]


def core_budget() -> int:
    """The cores this experiment may use: OMP_NUM_THREADS when set (several experiments sharing a machine each
    give theirs), else every core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """The core budget shared evenly among the workers (at least one thread each)."""
    return max(1, (cores or core_budget()) // max(1, workers))


def _worker(threads: int, run: Callable[..., Any], call: dict[str, Any], errors: Any) -> None:
    """One worker process: its thread budget first (before torch spreads over every core), then its seeds; a
    failure goes back to the parent as one line."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # nnU-Net's and other libraries' own threads too
    try:
        import torch

        torch.set_num_threads(threads)
        run(**call, progress=False, write_report=False)
    except BaseException as exc:
        errors.put(str(exc) if isinstance(exc, SonosynthError) else f"a downstream worker failed: "
                   f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None


def run_seed_groups(run: Callable[..., Any], groups: list[list[int]], call: dict[str, Any], cells_dir: Path,
                    planned: int, threads: int, progress: bool = True) -> None:
    """Run `run(**call, only_seeds=group)` (`run_downstream`) for every group at once, one process each, `threads` torch
    threads each; the bar counts the cells written. The first worker to fail stops the others (their finished
    cells stay) and its one-line error is raised here."""
    from sonosynth.progress import progress_bar

    context = get_context("spawn")  # a fresh interpreter: no torch thread pool or CUDA state inherited
    errors = context.Queue()
    workers = [context.Process(target=_worker, args=(threads, run, {**call, "only_seeds": group}, errors))
               for group in groups]
    bar = progress_bar(total=planned, desc=f"downstream cells ({len(groups)} processes x {threads} "
                       f"thread{'' if threads == 1 else 's'})",
                       disable=not progress)
    try:
        for worker in workers:
            worker.start()
        while any(w.is_alive() for w in workers) and not any(w.exitcode for w in workers):
            time.sleep(1)
            bar.update(len(list(cells_dir.glob("*.json"))) - bar.n)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join()
        bar.close()
    if any(w.exitcode for w in workers):
        try:
            message = errors.get(timeout=5)
        except queue.Empty:
            message = "a downstream worker stopped with exit code " + str(next(w.exitcode for w in workers
                                                                             if w.exitcode))
        raise SonosynthError(message)
