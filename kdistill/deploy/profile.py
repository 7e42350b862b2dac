"""CPU speed of a model, measured the same way for every model: fixed thread count, warm-up first,
each timed round runs enough iterations to last a few milliseconds, and the median round is kept.
(Its size and compute: kdistill/models/size.py.)"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(threads: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_interleaved(runs: dict[str, Callable[[], object]], rounds: int, min_round_s: float = 0.02,
                     warmup: int = 2, tick: Callable[[], object] = lambda: None) -> dict[str, tuple[float, float]]:
    """Median and spread (max - min) of the per-call seconds of each callable, measured round by
    round: every round times each callable once, in an order rotated every round, so background
    load and thermal drift hit all of them alike instead of whichever happened to run last.
    ``tick`` is called after every round (a progress line)."""
    calls = {name: _calls_per_round(run, warmup, min_round_s) for name, run in runs.items()}
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            for _ in range(calls[name]):
                runs[name]()
            samples[name].append((time.perf_counter() - started) / calls[name])
        tick()
    return {name: (statistics.median(s), max(s) - min(s)) for name, s in samples.items()}


def _calls_per_round(run: Callable[[], object], warmup: int, min_round_s: float) -> int:
    """Warm ``run`` up, then size a round to last at least ``min_round_s`` (timer resolution)."""
    for _ in range(warmup):
        run()
    started = time.perf_counter()
    run()
    return max(1, int(min_round_s / max(time.perf_counter() - started, 1e-6)))
