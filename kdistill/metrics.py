"""Classification metrics from predicted probabilities, via scikit-learn where it has them.

For binary data the positive class is named (for chest X-rays, PNEUMONIA): sensitivity is its
recall, specificity the other class's recall, and a prediction is positive when the positive
class's probability reaches the decision threshold. Multi-class data uses the arg-max.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score


def predict(probs: np.ndarray, positive_index: int | None, threshold: float | None) -> np.ndarray:
    """Class decisions: thresholded positive probability for binary data, else arg-max."""
    if positive_index is None or threshold is None:
        return probs.argmax(1)
    negative_index = 1 - positive_index
    return np.where(probs[:, positive_index] >= threshold, positive_index, negative_index)


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, positive_index: int | None, threshold: float | None
) -> dict:
    """Accuracy, balanced accuracy, sensitivity/specificity (binary), ROC AUC, ECE, confusion."""
    num_classes = probs.shape[1]
    preds = predict(probs, positive_index, threshold)
    result = {
        "accuracy": float((preds == labels).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(labels, preds)),
        "sensitivity": None,
        "specificity": None,
        "auc": _auc(probs, labels, positive_index),
        "ece": expected_calibration_error(probs, labels),
        "confusion_matrix": confusion_matrix(labels, preds, labels=list(range(num_classes))).tolist(),
    }
    if positive_index is not None:
        positives = labels == positive_index
        result["sensitivity"] = float((preds[positives] == positive_index).mean()) if positives.any() else None
        result["specificity"] = float((preds[~positives] != positive_index).mean()) if (~positives).any() else None
    return result


def _auc(probs: np.ndarray, labels: np.ndarray, positive_index: int | None) -> float | None:
    if len(np.unique(labels)) < 2:
        return None  # undefined with one class present
    if positive_index is not None:
        return float(roc_auc_score(labels == positive_index, probs[:, positive_index]))
    if len(np.unique(labels)) < probs.shape[1]:
        return None
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE over equal-width confidence bins: sum_b |B|/N * |accuracy(B) - confidence(B)|."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)
