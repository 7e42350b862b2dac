"""Size, compute and CPU speed of a model, measured the same way for every model.

MACs come from PyTorch's own FLOP counter (``torch.utils.flop_counter``; 1 MAC = 2 FLOPs; it counts
convolutions and matrix products, which dominate). Latency: fixed thread count, warm-up first,
each timed round runs enough iterations to last a few milliseconds, and the median round is kept.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, channels: int) -> int:
    """Multiply-accumulates of one forward pass on one ``channels x input_size x input_size`` image."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, channels, input_size, input_size))
    model.train(was_training)
    return counter.get_total_flops() // 2


@contextmanager
def torch_threads(threads: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def median_seconds(run, repeats: int, min_round_s: float = 0.005) -> tuple[float, float]:
    """Median and spread (max - min) of the per-call time of ``run()``, after warm-up."""
    return time_interleaved({"run": run}, repeats, min_round_s=min_round_s, warmup=3)["run"]


def measure_speed(model: nn.Module, input_size: int, channels: int, *, threads: int = 2,
                  repeats: int = 20, throughput_batch: int = 64) -> dict:
    """Batch-1 latency (ms) and batch-``throughput_batch`` throughput (images/s) on the CPU."""
    model = model.eval()
    one = torch.randn(1, channels, input_size, input_size)
    many = torch.randn(throughput_batch, channels, input_size, input_size)
    with torch_threads(threads), torch.inference_mode():
        latency, latency_spread = median_seconds(lambda: model(one), repeats)
        per_batch, _ = median_seconds(lambda: model(many), max(3, repeats // 4))
    return {"latency_ms_batch1": latency * 1e3, "latency_spread_ms": latency_spread * 1e3,
            "throughput_img_s": throughput_batch / per_batch, "threads": threads}


def profile_model(model: nn.Module, input_size: int, channels: int, **speed_args) -> dict:
    """Parameters, MACs and CPU speed in one dictionary (the results.json model row fields)."""
    return {"params": count_parameters(model), "macs": count_macs(model, input_size, channels),
            **measure_speed(model, input_size, channels, **speed_args)}


def time_interleaved(runs: dict[str, Callable[[], object]], rounds: int, min_round_s: float = 0.02,
                     warmup: int = 2) -> dict[str, tuple[float, float]]:
    """Median and spread (max - min) of the per-call seconds of each callable, measured round by
    round: every round times each callable once, in an order rotated every round, so background
    load and thermal drift hit all of them alike instead of whichever happened to run last."""
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
    return {name: (statistics.median(s), max(s) - min(s)) for name, s in samples.items()}


def _calls_per_round(run: Callable[[], object], warmup: int, min_round_s: float) -> int:
    """Warm ``run`` up, then size a round to last at least ``min_round_s`` (timer resolution)."""
    for _ in range(warmup):
        run()
    started = time.perf_counter()
    run()
    return max(1, int(min_round_s / max(time.perf_counter() - started, 1e-6)))
