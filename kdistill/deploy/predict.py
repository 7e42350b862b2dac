"""``kdistill predict``: classify image files with a checkpoint directory or an exported ONNX file.
Preprocessing comes from the checkpoint's ``model.json`` or the ONNX metadata; unreadable files
are listed with the reason and the others are still classified."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdistill.data.transforms import to_model_input
from kdistill.errors import DataError
from kdistill.data.imagefiles import decode_images, find_images
from kdistill.eval.metrics import predict as decide
from kdistill.deploy.onnx_model import ExportError, open_session, read_contract, session_probs
from kdistill.deploy.profile import torch_threads

CHUNK = 64  # files decoded at a time, so memory stays flat for large folders


@dataclass
class Predictor:
    """A model behind one function: normalized float batch -> class probabilities ``[B, K]``."""

    source: str
    contract: dict  # classes, positive_class, threshold, temperature, input_size, channels, mean, std
    probs: Callable[[torch.Tensor], np.ndarray]


def load_predictor(path: Path, threads: int = 1) -> Predictor:
    """A checkpoint directory runs in PyTorch; an ``.onnx`` file in ONNX Runtime."""
    if path.is_dir():
        from kdistill.models.checkpoint import load_checkpoint

        model, meta = load_checkpoint(path)
        temperature = meta.get("temperature") or 1.0  # fitted on validation; the threshold assumes it

        def torch_probs(images: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return torch.softmax(model(images).float() / temperature, dim=1).numpy()

        return Predictor(str(path), meta, torch_probs)
    if not path.exists():
        raise ExportError(f"{path}: not found (give a checkpoint directory or an exported .onnx file)")
    contract = read_contract(path)
    session = open_session(path, threads)
    temperature = contract.get("temperature") or 1.0
    return Predictor(str(path), contract, lambda images: session_probs(session, images.numpy(), temperature))


def predict_paths(predictor: Predictor, inputs: list[Path]) -> tuple[list[dict], list[dict]]:
    """One row per readable image (sorted as found) and ``{"file", "reason"}`` per unreadable one."""
    files, missing = find_images(inputs)
    rows, unreadable = [], [{"file": f, "reason": r} for f, r in missing]
    for start in range(0, len(files), CHUNK):
        chunk_rows, bad = _predict_chunk(predictor, files[start:start + CHUNK])
        rows.extend(chunk_rows)
        unreadable.extend({"file": f, "reason": r} for f, r in bad)
    return rows, unreadable


def _predict_chunk(predictor: Predictor, files: list[Path]) -> tuple[list[dict], list[tuple[str, str]]]:
    c = predictor.contract
    images, kept, bad = decode_images(files, c["input_size"], c["channels"])
    if not kept:
        return [], bad
    probs = predictor.probs(to_model_input(images, c["channels"], tuple(c["mean"]), tuple(c["std"])))
    return [_row(path, p, c) for path, p in zip(kept, probs)], bad


def _row(path: Path, probs: np.ndarray, contract: dict) -> dict:
    """The decision uses the same rule as evaluation: positive class at probability >= threshold."""
    classes, positive = contract["classes"], contract.get("positive_class")
    positive_index = classes.index(positive) if positive is not None else None
    threshold = contract.get("threshold") if positive_index is not None else None
    label = int(decide(probs[None], positive_index, threshold)[0])
    row = {"file": str(path), "class": classes[label], "probability": float(probs[label])}
    if positive_index is not None and len(classes) == 2:
        row["positive_class"] = positive
        row["positive_probability"] = float(probs[positive_index])
    row["threshold"] = threshold
    return row


def run_predict(model_path: Path, inputs: list[Path], *, as_json: bool = False, threads: int = 1) -> str:
    """``kdistill predict``: the text to print (a table or JSON)."""
    predictor = load_predictor(model_path, threads)
    with torch_threads(threads):
        rows, unreadable = predict_paths(predictor, inputs)
    if not rows and not unreadable:
        raise DataError(f"{', '.join(map(str, inputs))}: no image files found")
    if not rows:
        first = unreadable[0]
        raise DataError(f"none of the {len(unreadable)} file(s) could be read "
                        f"(first: {first['file']}: {first['reason']})")
    if as_json:
        return json.dumps({"model": predictor.source, "predictions": rows, "unreadable": unreadable}, indent=2)
    return format_predictions(rows, unreadable)


def format_predictions(rows: list[dict], unreadable: list[dict]) -> str:
    """A plain-text table; unreadable files follow it, one per line with the reason."""
    binary = any("positive_probability" in r for r in rows)
    header = ["file", "class", "prob"] + ([f"p({rows[0]['positive_class']})", "threshold"] if binary else [])
    body = [[r["file"], r["class"], f"{r['probability']:.4f}"]
            + ([f"{r['positive_probability']:.4f}", threshold_text(r["threshold"])] if binary else [])
            for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body]]
    if unreadable:
        lines.append(f"\n{len(unreadable)} unreadable file(s):")
        lines.extend(f"  {u['file']}: {u['reason']}" for u in unreadable)
    return "\n".join(lines)


def threshold_text(threshold: float | None) -> str:
    """A decision threshold to 4 significant digits (JSON keeps every digit); none: arg-max."""
    return "arg-max" if threshold is None else f"{threshold:.4g}"
