"""``kdistill bench``: CPU latency (batch 1) and throughput (batch 64) of several models in several
runtimes (PyTorch eager, PyTorch channels-last, ONNX Runtime fp32, optionally int8), measured side
by side in one process: same thread count for both runtimes, warm-up first, every variant timed
once per round in rotating order, median of the rounds with the spread (max - min) shown."""

from __future__ import annotations

import copy
import importlib.util
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdistill.models.checkpoint import architecture, load_checkpoint
from kdistill.data import ImageSplit
from kdistill.data.transforms import normalization
from kdistill.errors import KdistillError
from kdistill.deploy.export import model_batches, quantize_int8, torch_to_onnx
from kdistill.data.imagefiles import load_images
from kdistill.models import build_model, deploy_form
from kdistill.deploy.onnx_model import INPUT_NAME, open_session
from kdistill.deploy.profile import time_interleaved, torch_threads
from kdistill.models.size import model_size
from kdistill.log import progress_bar

RANDOM_CALIBRATION = "random N(0,1) inputs (latency only: says nothing about int8 accuracy)"


@dataclass
class BenchModel:
    """One model to time: its label, eager module, preprocessing metadata and calibration images."""

    label: str
    model: nn.Module
    meta: dict
    calibration: ImageSplit | None = None
    calibration_source: str = RANDOM_CALIBRATION


def load_bench_models(checkpoints: list[str], names: list[str], *, input_size: int | None, num_classes: int,
                      channels: int | dict[str, list[int]] | None = None,
                      calibration: str | None = None) -> list[BenchModel]:
    """Checkpoint directories (calibrated on ``calibration`` if given) and freshly built architectures.
    The architectures take ``input_size`` when given, else the checkpoints' (224 px without
    checkpoints). ``channels`` is one count for every architecture, or ``{name: [counts]}``: a name
    listed with several counts is timed once per count (a grayscale student beside its RGB twin);
    names not listed take the checkpoints' channels (3 without checkpoints). Every model must take
    the same image size: ratios between models fed different images would compare different work;
    channel counts may differ (each model reads its own input, one grayscale or three colour planes
    of the same image)."""
    models = []
    for directory in checkpoints:
        model, meta = load_checkpoint(directory)
        bench_model = BenchModel(f"{meta['architecture']['name']} ({Path(directory).name})", model, meta)
        if calibration:
            bench_model.calibration, _ = load_images(Path(calibration), meta, 64)
            bench_model.calibration_source = f"{len(bench_model.calibration)} images from {calibration}"
        models.append(bench_model)
    first = models[0].meta if models else {"input_size": 224, "channels": 3}
    input_size = input_size or first["input_size"]
    per_name = channels if isinstance(channels, dict) else {}
    _require_listed(per_name, names)
    for name in names:
        counts = per_name.get(name) or [channels if isinstance(channels, int) else first["channels"]]
        for count in counts:
            label = name if len(counts) == 1 else f"{name} ({count} ch)"
            models.append(_architecture_model(name, label, num_classes, input_size, count))
    _require_same_input(models)
    return models


def _architecture_model(name: str, label: str, num_classes: int, input_size: int, channels: int) -> BenchModel:
    torch.manual_seed(0)  # random weights: speed does not depend on their values
    model = build_model(name, num_classes, input_size=input_size, in_channels=channels).eval()
    mean, std = normalization(channels)
    meta = {"architecture": architecture(name, num_classes, input_size, channels, {}),
            "input_size": input_size, "channels": channels, "mean": list(mean), "std": list(std)}
    return BenchModel(label, model, meta)


def _require_listed(per_name: dict, names: list[str]) -> None:
    unknown = sorted(set(per_name) - set(names))
    if unknown:
        raise KdistillError(f"bench: --channels {unknown[0]}=...: {unknown[0]} is not one of the --model names "
                            f"({', '.join(names) or 'none given'})")


def parse_channels(items: list[str]) -> dict[str, list[int]]:
    """``--channels NAME=C[,C]`` options -> ``{name: [counts]}``; one line naming a bad item."""
    parsed: dict[str, list[int]] = {}
    for item in items:
        name, _, text = item.rpartition("=")
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            counts = []
        if not name or not counts or any(c not in (1, 3) for c in counts):
            raise KdistillError(f"bench: --channels {item!r}: expected NAME=C with C 1 or 3 (or NAME=1,3)")
        parsed.setdefault(name, []).extend(c for c in counts if c not in parsed.get(name, []))
    return parsed


def _require_same_input(models: list[BenchModel]) -> None:
    if len({m.meta["input_size"] for m in models}) > 1:
        described = "; ".join(f"{m.label}: {m.meta['input_size']} px, {m.meta['channels']} channels"
                              for m in models)
        raise KdistillError(f"bench: the models take different inputs ({described}); bench them "
                            "separately, or give --input-size to match the checkpoints")


def runtimes(bench_model: BenchModel, scratch: Path, threads: int, int8: bool) -> dict[str, Callable]:
    """For each runtime, a factory ``batch -> callable`` that runs one forward pass on a fixed input.
    Every runtime runs ``deploy_form`` of the model, as kdistill runs it for inference."""
    meta = bench_model.meta
    model = deploy_form(bench_model.model.eval())
    shape = (meta["channels"], meta["input_size"], meta["input_size"])
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    sessions = _onnx_sessions(model, bench_model, scratch, threads, int8) if onnx_available() else {}

    def inputs(batch: int) -> torch.Tensor:
        return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))

    made = {"torch eager": lambda b: _torch_call(model, inputs(b)),
            # Input converted once, outside the timing, as a channels-last pipeline would deliver it.
            "torch channels-last": lambda b: _torch_call(
                channels_last, inputs(b).contiguous(memory_format=torch.channels_last))}
    for name, session in sessions.items():
        made[name] = lambda b, s=session: _session_call(s, inputs(b).numpy())
    return made


def onnx_available() -> bool:
    """ONNX Runtime runtimes are timed only when the ``export`` extra is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def _onnx_sessions(model: nn.Module, bench_model: BenchModel, scratch: Path, threads: int,
                   int8: bool) -> dict:
    """Sessions on the ONNX export of ``model`` (the deploy form: the file ``kdistill export`` ships)."""
    meta = bench_model.meta
    onnx_path = scratch / f"{id(bench_model)}.onnx"
    torch_to_onnx(model, meta["channels"], meta["input_size"], onnx_path)
    sessions = {"onnxruntime fp32": open_session(onnx_path, threads)}
    if int8:
        int8_path = scratch / f"{id(bench_model)}.int8.onnx"
        quantize_int8(onnx_path, int8_path, _calibration_batches(bench_model))
        sessions["onnxruntime int8"] = open_session(int8_path, threads)
    return sessions


def _torch_call(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    return lambda: model(x)


def _session_call(session, x: np.ndarray) -> Callable[[], object]:
    feed = {INPUT_NAME: np.ascontiguousarray(x)}
    return lambda: session.run(None, feed)


def _calibration_batches(bench_model: BenchModel) -> list[np.ndarray]:
    """Real images preprocessed as in training when given, else 4 batches of 8 random inputs."""
    if bench_model.calibration is not None:
        return [x.numpy() for x in model_batches(bench_model.calibration, bench_model.meta)]
    meta = bench_model.meta
    generator = torch.Generator().manual_seed(0)
    shape = (8, meta["channels"], meta["input_size"], meta["input_size"])
    return [torch.randn(shape, generator=generator).numpy() for _ in range(4)]


def run_bench(models: list[BenchModel], *, threads: int = 1, int8: bool = False, rounds: int = 15,
              throughput_batch: int = 64) -> list[dict]:
    """Time every model in every runtime, interleaved; one row per (model, runtime, batch)."""
    with tempfile.TemporaryDirectory() as scratch, torch_threads(threads), torch.inference_mode():
        made = {m.label: runtimes(m, Path(scratch), threads, int8) for m in models}
        sizes = {m.label: model_size(m.model, m.meta) for m in models}
        rows = []
        # Batch-64 calls last seconds for a large model: fewer rounds and one warm-up call suffice.
        phases = ((1, rounds, 3), (throughput_batch, max(3, rounds // 3), 1))
        with progress_bar(total=sum(r for _, r, _ in phases), what="speed timing", unit="round") as bar:
            for batch, batch_rounds, warmup in phases:
                calls = {(label, runtime): make(batch) for label, per_model in made.items()
                         for runtime, make in per_model.items()}
                timed = time_interleaved({f"{k[0]}|{k[1]}": v for k, v in calls.items()}, batch_rounds,
                                         warmup=warmup, tick=bar.update)
                rows += [_row(m, runtime, batch, timed[f"{m.label}|{runtime}"], threads, batch_rounds,
                              sizes[m.label]) for m in models for runtime in made[m.label]]
    add_ratios(rows, models)
    return rows


def add_speed(rows: list[dict], models: dict[str, tuple[nn.Module, dict]], **speed) -> None:
    """Batch-1 latency and batch throughput of every row, timed by the ``kdistill bench`` code with
    every distinct architecture side by side in one interleaved run (so background load hits them
    alike); rows of the same architecture (the students of every seed) share its figures. Then the
    speed-up of every row over the teacher. ``models`` maps row ids to (model, meta)."""
    groups: dict[str, tuple[nn.Module, dict, list[dict]]] = {}
    for row in rows:
        model, meta = models[row["id"]]
        key = json.dumps([meta["architecture"], meta["input_size"], meta["channels"]], sort_keys=True)
        groups.setdefault(key, (model, meta, []))[2].append(row)
    figures = speed_side_by_side([(model, meta) for model, meta, _ in groups.values()], **speed)
    for (_, _, members), measured in zip(groups.values(), figures):
        for row in members:
            row.update(measured)
    add_speedups(rows)


def add_speedups(rows: list[dict]) -> None:
    """Latency speed-up of every row relative to the teacher row (if there is one)."""
    teacher = next((r for r in rows if r["role"] == "teacher"), None)
    for row in rows:
        row["speedup_vs_teacher"] = (teacher["latency_ms_batch1"] / row["latency_ms_batch1"]
                                     if teacher else None)


def speed_side_by_side(models: list[tuple[nn.Module, dict]], *, threads: int = 2, repeats: int = 15,
                       throughput_batch: int = 64) -> list[dict]:
    """The speed fields of a ``results.json`` row for each (model, meta), all timed in one
    interleaved ``run_bench``: the batch-1 latency of each model's fastest runtime, that runtime's
    batch throughput, and the batch-1 latency of every runtime tried."""
    bench_models = [BenchModel(f"model{i}", model, meta) for i, (model, meta) in enumerate(models)]
    rows = run_bench(bench_models, threads=threads, rounds=repeats, throughput_batch=throughput_batch)
    figures = []
    for bench_model in bench_models:
        mine = [r for r in rows if r["model"] == bench_model.label]
        fastest = mine[0]["fastest_runtime"]
        one, many = (next(r for r in mine if r["runtime"] == fastest and r["batch"] == b)
                     for b in (1, throughput_batch))
        by_runtime = {r["runtime"]: r["latency_ms"] for r in mine if r["batch"] == 1}
        figures.append({"runtime": fastest, "latency_ms_batch1": one["latency_ms"],
                        "latency_spread_ms": one["spread_ms"], "throughput_img_s": many["throughput_img_s"],
                        "throughput_batch": throughput_batch, "threads": threads,
                        "latency_ms_by_runtime": by_runtime})
    return figures


def _row(bench_model: BenchModel, runtime: str, batch: int, timing: tuple[float, float], threads: int,
         rounds: int, sizes: dict) -> dict:
    median, spread = timing
    row = {"model": bench_model.label, "runtime": runtime, "batch": batch,
           "latency_ms": median * 1e3, "spread_ms": spread * 1e3, "throughput_img_s": batch / median,
           **sizes, "input_size": bench_model.meta["input_size"], "channels": bench_model.meta["channels"],
           "threads": threads, "rounds": rounds}
    if runtime.endswith("int8"):
        row["calibration"] = bench_model.calibration_source
    return row


def add_ratios(rows: list[dict], models: list[BenchModel]) -> None:
    """MAC ratio and batch-1 latency ratio (fastest runtime of each) against the largest model."""
    fastest = {m.label: min((r for r in rows if r["model"] == m.label and r["batch"] == 1),
                            key=lambda r: r["latency_ms"]) for m in models}
    reference = max(fastest.values(), key=lambda r: r["macs"])
    # The reference model's row in each (runtime, batch): the same-runtime-and-precision comparison.
    same = {(r["runtime"], r["batch"]): r for r in rows if r["model"] == reference["model"]}
    for row in rows:
        best = fastest[row["model"]]
        twin = same.get((row["runtime"], row["batch"]))
        row.update(reference_model=reference["model"], fastest_runtime=best["runtime"],
                   macs_ratio=reference["macs"] / max(row["macs"], 1),
                   bytes_ratio=reference["bytes"] / max(row["bytes"], 1),
                   latency_ratio=reference["latency_ms"] / best["latency_ms"],
                   reference_fastest_runtime=reference["runtime"],
                   same_runtime_ratio=twin["latency_ms"] / row["latency_ms"] if twin else None)


def format_bench(rows: list[dict]) -> str:
    """The per-runtime table, then the models side by side (ratios against the largest model)."""
    threads, batch = rows[0]["threads"], max(r["batch"] for r in rows)
    lines = [f"input: {rows[0]['input_size']} px; threads: {threads} (torch.set_num_threads({threads}); "
             f"ONNX Runtime intra_op={threads}, inter_op=1); median of rounds (batch 1: "
             f"{rows[0]['rounds']}, batch {batch}: {rows[-1]['rounds']}), variants interleaved round "
             "by round; spread = max - min", ""]
    table = [["model", "ch", "runtime", "batch-1 ms", "spread ms", f"batch-{batch} img/s",
              f"batch-{batch} spread ms", "MACs"]]
    big = {(r["model"], r["runtime"]): r for r in rows if r["batch"] == batch}
    for r in (r for r in rows if r["batch"] == 1):
        many = big[(r["model"], r["runtime"])]
        table.append([r["model"], str(r["channels"]), r["runtime"], f"{r['latency_ms']:.3f}", f"{r['spread_ms']:.3f}",
                      f"{many['throughput_img_s']:.1f}", f"{many['spread_ms']:.1f}", _macs(r["macs"])])
    lines += _align(table)
    calibrations = sorted({f"{r['model']}: {r['calibration']}" for r in rows if "calibration" in r})
    if calibrations:
        lines += ["", "int8 calibration:"] + [f"  {c}" for c in calibrations]
    reference = rows[0]["reference_model"]
    side = [["model", "ch", "params", "MACs", "MAC ratio", "MB moved", "bytes ratio", "fastest runtime",
             "batch-1 ms", "latency ratio"]]
    for r in rows:
        if r["batch"] == 1 and r["runtime"] == r["fastest_runtime"]:
            side.append([r["model"], str(r["channels"]), f"{r['params']:,}", _macs(r["macs"]), f"{r['macs_ratio']:.1f}x",
                         f"{r['bytes'] / 1e6:.1f}", f"{r['bytes_ratio']:.1f}x", r["runtime"], f"{r['latency_ms']:.3f}", f"{r['latency_ratio']:.1f}x"])
    lines += ["", f"side by side (ratios: {reference} / model):"] + _align(side)
    lines += ["MACs and MB moved describe each architecture as trained (fp32 PyTorch operators; MB: "
              "the bytes one batch-1 forward pass reads and writes, weights and activations), not "
              "the inference form or the int8 file that is timed; compare their ratios with the "
              "measured latency ratio"]
    return "\n".join(lines)


SAME_RUNTIME = "onnxruntime fp32"  # the runtime and precision both models of a like-for-like ratio run in


def format_comparison(rows: list[dict]) -> str:
    """The latency ratios against the largest model, two ways, per thread count (batch 1):
    fastest runtime against fastest runtime (e.g. the reference's int8 file against the student's
    best), and the same runtime and precision for both (fp32 ONNX Runtime against fp32 ONNX Runtime)."""
    table = [["threads", "model", "ch", "reference fastest", "model fastest", "fastest/fastest",
              f"{SAME_RUNTIME} ms (ref / model)", "same-runtime ratio"]]
    for threads in sorted({r["threads"] for r in rows}):
        ones = [r for r in rows if r["threads"] == threads and r["batch"] == 1]
        reference = ones[0]["reference_model"]
        ref_best = next(r for r in ones if r["model"] == reference and r["runtime"] == r["fastest_runtime"])
        ref_same = next((r for r in ones if r["model"] == reference and r["runtime"] == SAME_RUNTIME), None)
        for r in ones:
            if r["model"] == reference or r["runtime"] != r["fastest_runtime"]:
                continue
            same = next((s for s in ones if s["model"] == r["model"] and s["runtime"] == SAME_RUNTIME), None)
            same_cells = (["-", "-"] if same is None or ref_same is None else
                          [f"{ref_same['latency_ms']:.3f} / {same['latency_ms']:.4f}",
                           f"{ref_same['latency_ms'] / same['latency_ms']:.1f}x"])
            table.append([str(threads), r["model"], str(r["channels"]),
                          f"{ref_best['runtime']} {ref_best['latency_ms']:.3f} ms",
                          f"{r['runtime']} {r['latency_ms']:.4f} ms", f"{r['latency_ratio']:.1f}x", *same_cells])
    reference = rows[0]["reference_model"]
    return "\n".join([f"batch-1 latency ratios ({reference} / model), each thread count timed in its own "
                      "interleaved run:"] + _align(table))


def _macs(macs: int) -> str:
    return f"{macs / 1e9:.2f} G" if macs >= 1e9 else f"{macs / 1e6:.2f} M"


def _align(table: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


def bench_command(checkpoints: list[str], names: list[str], *, input_size: int | None, num_classes: int,
                  threads: int | list[int] | None, int8: bool, calibration: str | None, rounds: int,
                  as_json: bool, channels: dict[str, list[int]] | None = None) -> str:
    """``kdistill bench``: the text to print (tables, or a JSON list of rows). ``threads``: one
    count or several, each timed in its own interleaved run (default: 1, and 1 and 2 with ``int8``,
    whose comparison table is stated at both)."""
    if not checkpoints and not names:
        raise KdistillError("bench: give at least one --checkpoint DIR or --model NAME")
    models = load_bench_models(checkpoints, names, input_size=input_size, num_classes=num_classes,
                               channels=channels, calibration=calibration)
    counts = [threads] if isinstance(threads, int) else threads or ([1, 2] if int8 else [1])
    runs = [run_bench(models, threads=count, int8=int8, rounds=rounds) for count in counts]
    if as_json:
        return json.dumps([row for rows in runs for row in rows], indent=2)
    text = "\n\n".join(format_bench(rows) for rows in runs)
    if len(models) > 1:
        text += "\n\n" + format_comparison([row for rows in runs for row in rows])
    return text
