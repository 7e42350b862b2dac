"""``student.budget``: a student's parameter count and its batch-1 CPU latency, measured as
``kdistill bench`` measures it (its runtimes, interleaved rounds, the fastest runtime kept), and
the one-line refusal of a student that breaks a bound."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from kdistill.data.transforms import normalization
from kdistill.deploy.bench import BenchModel, runtimes
from kdistill.deploy.profile import time_interleaved, torch_threads
from kdistill.models.size import count_parameters
from kdistill.errors import ConfigError
from kdistill.models.checkpoint import architecture

LATENCY_ROUNDS = 9  # batch-1 calls of a small student last well under a millisecond


def measure_latency(model: nn.Module, name: str, *, input_size: int, channels: int, num_classes: int,
                    threads: int = 1, rounds: int = LATENCY_ROUNDS) -> dict:
    """Batch-1 latency of ``model`` in every runtime bench times (ONNX Runtime too when it is
    installed), interleaved round by round; the fastest runtime's median is the figure:
    ``{"latency_ms", "runtime", "threads", "by_runtime"}``."""
    mean, std = normalization(channels)
    meta = {"architecture": architecture(name, num_classes, input_size, channels, {}),
            "input_size": input_size, "channels": channels, "mean": list(mean), "std": list(std)}
    with tempfile.TemporaryDirectory() as scratch, torch_threads(threads), torch.inference_mode():
        made = runtimes(BenchModel(name, model, meta), Path(scratch), threads, int8=False)
        timed = time_interleaved({runtime: make(1) for runtime, make in made.items()}, rounds)
    by_runtime = {runtime: median * 1e3 for runtime, (median, _) in timed.items()}
    fastest = min(by_runtime, key=by_runtime.get)
    return {"latency_ms": by_runtime[fastest], "runtime": fastest, "threads": threads,
            "by_runtime": by_runtime}


def params_over_budget(params: int, bound: int | None) -> str | None:
    """Why ``params`` breaks ``student.budget.params``, or None when it fits."""
    if bound is None or params <= bound:
        return None
    return f"{params:,} parameters > {bound:,}"


def latency_over_budget(latency: dict, bound: float | None) -> str | None:
    """Why a :func:`measure_latency` figure breaks ``student.budget.latency_ms``, or None."""
    if bound is None or latency["latency_ms"] <= bound:
        return None
    return (f"{latency['latency_ms']:.3f} ms > {bound:g} ms (batch 1, {latency['runtime']}, "
            f"{latency['threads']} thread{'s' if latency['threads'] > 1 else ''})")


def enforce_budget(model: nn.Module, name: str, *, params: int | None, latency_ms: float | None,
                   threads: int, input_size: int, channels: int, num_classes: int) -> None:
    """Raise a one-line :class:`ConfigError` naming the key, the measured figure and the bound when
    the student breaks ``student.budget``. The latency is measured only when it is bounded."""
    over = params_over_budget(count_parameters(model), params)
    if over:
        raise ConfigError(f"student.budget.params: {name} has {over}")
    if latency_ms is None:
        return
    measured = measure_latency(model.eval(), name, input_size=input_size, channels=channels,
                               num_classes=num_classes, threads=threads)
    over = latency_over_budget(measured, latency_ms)
    if over:
        raise ConfigError(f"student.budget.latency_ms: {name} at {input_size} px measured {over}")
