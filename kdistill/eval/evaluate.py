"""Evaluate a model on a split: metrics and size as one ``results.json`` model row (its CPU speed
is added beside the other models' by kdistill/deploy/bench.py), and the statistics across rows.
The decision threshold and the temperature come from the checkpoint (fitted on validation when it
was trained); nothing is chosen here."""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from kdistill.eval.calibration import describe_fit, scaled_probs
from kdistill.models.size import model_size
from kdistill.data import ImageSplit
from kdistill.eval.inference import predict_logits
from kdistill.models.ensemble import MEMBER_ROLE
from kdistill.eval.pooled import pooled_tests
from kdistill.eval.metrics import (bootstrap_ci, bootstrap_indices, classification_metrics,
                              expected_calibration_error, mcnemar_exact, mean_std,
                              paired_auc_difference, predict)

DECISION_KEYS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "confusion_matrix")


def evaluate_model(model: nn.Module, meta: dict, split: ImageSplit, *, name: str, role: str,
                   checkpoint: str | None) -> tuple[dict, np.ndarray]:
    """One ``results.json`` row (metrics at the checkpoint's threshold and at 0.5, calibration,
    bootstrap intervals, params, MACs, bytes moved) and the temperature-scaled test probabilities.
    CPU speed is added afterwards by ``add_speed``, for all models side by side."""
    logits = predict_logits(model, split, channels=meta["channels"], mean=meta["mean"], std=meta["std"],
                            what=f"evaluating the {role}")
    metrics, probs = score_logits(logits, split.labels.numpy(), meta)
    profile = model_size(model, meta)
    seed = meta.get("seed")
    row = {"id": role if role == "teacher" or seed is None else f"{role}-seed{seed}", "seed": seed,
           "name": name, "role": role, **profile, **metrics, "positive_class": meta.get("positive_class"),
           "images": len(split), "checkpoint": checkpoint, "history": meta.get("history"),
           "threshold_fitted_on": describe_fit(meta.get("calibration"))}
    return row, probs


def score_logits(logits: torch.Tensor, labels: np.ndarray, meta: dict) -> tuple[dict, np.ndarray]:
    """Metrics of one model's test logits, using only what its checkpoint fixed on validation:
    decisions at ``meta["threshold"]`` (and at 0.5 for comparison) on ``softmax(logits / T)``;
    ECE with and without ``T``; bootstrap 95% intervals of accuracy and AUC."""
    classes, positive = meta["classes"], meta.get("positive_class")
    positive_index = classes.index(positive) if positive is not None else None
    threshold, temperature = meta.get("threshold"), meta.get("temperature") or 1.0
    probs = scaled_probs(logits, temperature)
    metrics = classification_metrics(probs, labels, positive_index, threshold)
    at_half = classification_metrics(probs, labels, positive_index, 0.5 if positive_index is not None else None)
    indices = bootstrap_indices(len(labels))
    return {**metrics, "threshold": threshold, "threshold_rule": meta.get("threshold_rule"),
            "temperature": temperature,
            "ece_uncalibrated": expected_calibration_error(scaled_probs(logits), labels),
            "at_0.5": {key: at_half[key] for key in DECISION_KEYS},
            "ci": bootstrap_ci(probs, labels, positive_index, threshold, indices)}, probs


SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "ece")


def run_statistics(rows: list[dict], probs: dict[str, np.ndarray], labels: np.ndarray,
                   positive_index: int | None) -> dict:
    """The ``results.json`` entries that look across models: ``summary`` (mean, std and n of every
    role over its seeds), ``paired_tests`` (distilled vs baseline of the same seed on the same test
    images), ``pooled_tests`` (one test per method over all seeds, the test images as units; see
    ``kdistill.eval.pooled``) and ``predictions`` (labels and every model's probabilities, for plots)."""
    return {"summary": summarize(rows),
            "paired_tests": paired_tests(rows, probs, labels, positive_index),
            "pooled_tests": pooled_tests(rows, probs, labels, positive_index),
            "predictions": {"labels": labels.tolist(),
                            "probabilities": {key: np.round(p, 6).tolist() for key, p in probs.items()}}}


def summarize(rows: list[dict]) -> dict:
    """``{role: {metric: {"mean", "std", "n"}}}`` over the rows of each role (one per seed); in a
    comparison of methods each distilled method is its own entry (the row's ``group``). An ensemble's
    members have their own rows in the table, but no entry here."""
    rows = [row for row in rows if row["role"] != MEMBER_ROLE]  # members are models, not seeds of one
    groups = list(dict.fromkeys(row.get("group") or row["role"] for row in rows))
    return {group: {metric: mean_std([r.get(metric) for r in rows if (r.get("group") or r["role"]) == group])
                    for metric in SUMMARY_METRICS} for group in groups}


def paired_tests(rows: list[dict], probs: dict[str, np.ndarray], labels: np.ndarray,
                 positive_index: int | None) -> list[dict]:
    """Per seed: McNemar's exact test on the two students' test decisions (each at its own
    validation threshold) and a paired bootstrap interval of their AUC difference."""
    baselines = {r.get("seed"): r for r in rows if r["role"] == "baseline"}
    indices = bootstrap_indices(len(labels))
    tests = []
    for distilled in rows:  # every distilled student (one per method in a comparison)
        seed = distilled.get("seed")
        baseline = baselines.get(seed)
        if distilled["role"] != "distilled" or baseline is None:
            continue
        correct = {r["id"]: predict(probs[r["id"]], positive_index, r["threshold"]) == labels
                   for r in (baseline, distilled)}
        mcnemar = mcnemar_exact(correct[baseline["id"]], correct[distilled["id"]])
        auc_diff = (None if distilled["auc"] is None or baseline["auc"] is None
                    else distilled["auc"] - baseline["auc"])
        tests.append({"seed": seed, "baseline": baseline["id"], "distilled": distilled["id"],
                      **({"method": distilled["method"]} if "method" in distilled else {}),
                      "test": "mcnemar", "baseline_only_correct": mcnemar["a_only_correct"],
                      "distilled_only_correct": mcnemar["b_only_correct"], "p_value": mcnemar["p_value"],
                      "accuracy_diff": distilled["accuracy"] - baseline["accuracy"], "auc_diff": auc_diff,
                      "auc_diff_ci": paired_auc_difference(probs[baseline["id"]], probs[distilled["id"]],
                                                           labels, positive_index, indices)})
    return tests
