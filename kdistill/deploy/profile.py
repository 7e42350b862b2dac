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
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
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


def count_bytes(model: nn.Module, input_size: int, channels: int) -> int:
    """Bytes one forward pass on one image reads and writes, operator by operator: every operator's
    tensor inputs (weights included) and outputs as PyTorch's eager operators run them; views and
    in-place operators count nothing (runtimes fuse those anyway). A small CNN is limited by this
    memory traffic, not by its MACs, so the two ratios together explain a latency ratio."""
    was_training = model.training
    model.eval()
    image = torch.zeros(1, channels, input_size, input_size)
    counter = _ByteCounter()
    with torch.inference_mode(), counter:  # as timed: some operators differ under no_grad
        model(image)
    model.train(was_training)
    return counter.total


class _ByteCounter(TorchDispatchMode):
    """Sums the bytes of each dispatched operator's tensors; an output that shares storage with an
    input is a view (reshape, flatten, transpose) and moves nothing."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        input_storages = {t.untyped_storage().data_ptr() for t in inputs}
        if all(t.untyped_storage().data_ptr() in input_storages for t in outputs):
            return out  # a view: no data moved
        self.total += sum(t.numel() * t.element_size() for t in inputs + outputs)
        return out


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
