"""Evaluate a model (or a checkpoint directory) on a split: metrics plus size and CPU speed, as
one ``results.json`` model row."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from kdistill import __version__
from kdistill.checkpoint import load_checkpoint
from kdistill.data import ImageSplit, load_eval_folder
from kdistill.fileio import write_json_atomic
from kdistill.inference import predict_probs
from kdistill.metrics import classification_metrics
from kdistill.profile import profile_model


def evaluate_model(model: nn.Module, meta: dict, split: ImageSplit, *, name: str, role: str,
                   checkpoint: str | None, speed: dict | None = None) -> dict:
    """Metrics at the checkpoint's decision threshold, plus params, MACs and CPU speed."""
    classes = meta["classes"]
    positive = meta.get("positive_class")
    positive_index = classes.index(positive) if positive is not None else None
    threshold = meta.get("threshold")
    probs = predict_probs(model, split, channels=meta["channels"], mean=meta["mean"], std=meta["std"])
    metrics = classification_metrics(probs, split.labels.numpy(), positive_index, threshold)
    profile = profile_model(model, meta["input_size"], meta["channels"], **(speed or {}))
    return {"name": name, "role": role, **profile, **metrics, "threshold": threshold,
            "positive_class": positive, "images": len(split), "checkpoint": checkpoint}


def add_speedups(rows: list[dict]) -> None:
    """Latency speed-up of every row relative to the teacher row (if there is one)."""
    teacher = next((r for r in rows if r["role"] == "teacher"), None)
    for row in rows:
        row["speedup_vs_teacher"] = (teacher["latency_ms_batch1"] / row["latency_ms_batch1"]
                                     if teacher else None)


def evaluate_checkpoint(checkpoint: Path, data: Path, out: Path | None, speed: dict | None = None,
                        on_bad_image: str = "skip") -> dict:
    """``kdistill evaluate``: one checkpoint on one folder; writes ``out`` (results.json)."""
    model, meta = load_checkpoint(checkpoint)
    split, skipped = load_eval_folder(data, meta["classes"], meta["input_size"], meta["channels"],
                                      on_bad_image)
    row = evaluate_model(model, meta, split, name=meta["architecture"]["name"],
                         role=meta.get("role", "model"), checkpoint=str(checkpoint), speed=speed)
    results = {"kdistill_version": __version__,
               "dataset": {"root": str(data), "evaluated_on": str(data), "classes": meta["classes"],
                           "positive_class": meta.get("positive_class"), "images": len(split),
                           "skipped_files": skipped},
               "models": [row]}
    if out is not None:
        write_json_atomic(out, results)
    return results
