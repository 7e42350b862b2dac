"""Robustness on the shift battery: a model's metrics on every rendering of the validation split
under acquisition changes (kdistill/data/shifts.py), at the threshold and temperature the model
already has, and how far each falls from the clean split.

The battery judges recipes beside clean validation and a held-out source; it selects nothing by
itself. Figures are on validation, where each model's epoch and threshold were chosen, so the
clean column is optimistic; the drops are what the battery adds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdistill.data import ImageSplit
from kdistill.data.shifts import BATTERY, SEVERITIES, battery_rendering, describe_battery, rendering_names
from kdistill.eval.calibration import scaled_probs
from kdistill.eval.inference import predict_logits
from kdistill.eval.metrics import classification_metrics, predict
from kdistill.eval.pooled import PERMUTATIONS, seed_pairs, sign_flip_test

METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc")


@dataclasses.dataclass(frozen=True)
class Battery:
    """Where a battery's renderings come from: the split, the draw seed, the cache folder."""

    split: ImageSplit
    seed: int = 0
    cache_dir: Path | None = None

    def images(self, name: str, severity: int) -> torch.Tensor:
        """uint8 images of the split under one shift and severity."""
        return battery_rendering(self.split.images, self.split.cache_key, name, severity, self.seed,
                                 self.cache_dir)

    def rendered_split(self, name: str, severity: int) -> ImageSplit:
        """The split with its images replaced by one rendering (labels and names unchanged)."""
        return dataclasses.replace(self.split, images=self.images(name, severity), cache_key=None)


def battery_logits(model: nn.Module, meta: dict, battery: Battery) -> dict[str, torch.Tensor]:
    """The model's logits on every rendering, ``{"<shift>/<severity index>": [N, K]}``."""
    return {f"{name}/{severity}": predict_logits(model, battery.rendered_split(name, severity),
                                                 channels=meta["channels"], mean=meta["mean"], std=meta["std"])
            for name, severity in rendering_names()}


def robustness(clean_logits: torch.Tensor, shifted: dict[str, torch.Tensor], labels: np.ndarray,
               meta: dict, battery: Battery, seen: list[str] = ()) -> dict:
    """The model's robustness record: metrics on the clean split and on every rendering (at the
    model's ``threshold`` and ``temperature`` in ``meta``), their mean per severity and over the
    whole battery, and the drop of each mean from clean (positive: worse under shift). ``seen``
    names the shifts the model's training views already drew (``covered_by``); the ``unseen``
    entries repeat the means over the other shifts alone."""
    clean = _metrics(clean_logits, labels, meta)
    per_shift = {shift.name: [_metrics(shifted[f"{shift.name}/{s}"], labels, meta)
                              for s in range(len(SEVERITIES))] for shift in BATTERY}
    unseen = [shift.name for shift in BATTERY if shift.name not in seen]
    right = sum(_right(shifted[f"{name}/{s}"], labels, meta) for name, s in rendering_names())
    return {"split": "val", "images": int(len(labels)), "seed": battery.seed,
            "renderings": len(rendering_names()), "renderings_right": right.tolist(),
            "severities": list(SEVERITIES), "battery": describe_battery(), "seen_in_training": list(seen),
            "clean": clean, "shifts": per_shift, **_summaries(clean, per_shift, [s.name for s in BATTERY]),
            "unseen": _summaries(clean, per_shift, unseen) if unseen else None}


def _summaries(clean: dict, per_shift: dict, names: list[str]) -> dict:
    """Means over ``names`` per severity and overall, and their drops from clean."""
    by_severity = [_mean([per_shift[name][s] for name in names]) for s in range(len(SEVERITIES))]
    overall = _mean([m for name in names for m in per_shift[name]])
    return {"by_severity": by_severity, "mean": overall, "drop": _drop(clean, overall),
            "drop_by_severity": [_drop(clean, entry) for entry in by_severity]}


def _metrics(logits: torch.Tensor, labels: np.ndarray, meta: dict) -> dict:
    classes, positive = meta["classes"], meta.get("positive_class")
    positive_index = classes.index(positive) if positive is not None else None
    probs = scaled_probs(logits, meta.get("temperature") or 1.0)
    found = classification_metrics(probs, labels, positive_index, meta.get("threshold"))
    return {key: found[key] for key in METRICS}


def _right(logits: torch.Tensor, labels: np.ndarray, meta: dict) -> np.ndarray:
    """1 where the model's decision (its threshold, its temperature) is right, per image."""
    classes, positive = meta["classes"], meta.get("positive_class")
    positive_index = classes.index(positive) if positive is not None else None
    probs = scaled_probs(logits, meta.get("temperature") or 1.0)
    return (predict(probs, positive_index, meta.get("threshold")) == labels).astype(np.int64)


def battery_tests(rows: list[dict], labels: np.ndarray) -> list[dict]:
    """Per distilled method with two or more seeds: is its balanced accuracy over the whole battery
    above the student alone's? A paired sign-flip test over the validation images (the
    independent units; seeds and renderings are repeated measurements of them) of the per-image
    difference in renderings right, summed over seeds, each image weighted by the other class's
    size so that the mean difference is the difference in balanced accuracy."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=int(labels.max()) + 1)
    weights, unit = _class_weights(counts, labels)
    tests = []
    for method, pairs in seed_pairs(rows).items():
        pairs = [(a, d) for a, d in pairs if a.get("robustness") and d.get("robustness")]
        if len(pairs) < 2:
            continue
        right = [sum(np.asarray(pair[side]["robustness"]["renderings_right"]) for pair in pairs) for side in (0, 1)]
        difference = (right[1] - right[0]) * weights
        renderings = pairs[0][1]["robustness"]["renderings"]
        scale = int((counts > 0).sum()) * unit * renderings * len(pairs)
        tests.append({**({"method": method} if method is not None else {}),
                      "seeds": [d.get("seed") for _, d in pairs], "images": int(len(labels)),
                      "renderings": renderings, "test": "sign_flip", "permutations": PERMUTATIONS,
                      "balanced_accuracy_diff": float(difference.sum() / scale),
                      "p_value": sign_flip_test(difference),
                      "images_better": int((difference > 0).sum()), "images_worse": int((difference < 0).sum())})
    return tests


def _class_weights(counts: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer weights proportional to ``1 / n_class(i)`` (balanced accuracy's), and the number
    they stand for 1 in: ``lcm(n) / n_class(i)``, or rounded per-mille shares when the least common
    multiple grows too large for exact integer sums."""
    present = counts[counts > 0]
    unit = int(np.lcm.reduce(present.astype(np.int64)))
    if unit > 2**40:
        unit = 1_000_000
        return np.round(unit / counts[labels]).astype(np.int64), unit
    return (unit // counts[labels]).astype(np.int64), unit


def _mean(entries: list[dict]) -> dict:
    """Each metric's mean over the entries that have it (AUC is None where a class is missing)."""
    result = {}
    for key in METRICS:
        values = [entry[key] for entry in entries if entry.get(key) is not None]
        result[key] = float(np.mean(values)) if values else None
    return result


def _drop(clean: dict, shifted: dict) -> dict:
    return {key: (None if clean.get(key) is None or shifted.get(key) is None else clean[key] - shifted[key])
            for key in METRICS}
