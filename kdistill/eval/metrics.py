"""Classification metrics from predicted probabilities, via scikit-learn where it has them.

For binary data the positive class is named (for chest X-rays, PNEUMONIA): sensitivity is its
recall, specificity the other class's recall, and a prediction is positive when the positive
class's probability reaches the decision threshold. Multi-class data uses the arg-max.

Uncertainty over the test images: percentile bootstrap intervals (1000 seeded resamples, scored
in chunks of ``[resamples, images]`` arrays), McNemar's exact test for two models' paired
decisions, and a paired bootstrap interval of their AUC difference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, rankdata
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


# --- Uncertainty: bootstrap confidence intervals and paired tests over the test images ---------

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Resamples:
    """``count`` bootstrap resamples of ``n`` image indices, drawn with replacement from a seeded
    generator. The same (n, count, seed) gives the same resamples, so every model of a run is
    scored on the same bootstrap sets (a paired design). They are drawn in chunks of rows holding
    at most ``values_per_chunk`` indices, so memory stays bounded on a large test set (1000
    resamples of 100,000 images would be 800 MB of indices at once, and several times that to
    rank them)."""

    n: int
    count: int = BOOTSTRAP_RESAMPLES
    seed: int = BOOTSTRAP_SEED
    values_per_chunk: int = 2_000_000

    def chunks(self) -> Iterator[np.ndarray]:
        """``[rows, n]`` index arrays, ``count`` rows in all."""
        rng = np.random.default_rng(self.seed)
        rows = max(1, self.values_per_chunk // max(self.n, 1))
        for start in range(0, self.count, rows):
            yield rng.integers(0, self.n, size=(min(rows, self.count - start), self.n))

    def as_array(self) -> np.ndarray:
        """All resamples at once, ``[count, n]`` (for small n)."""
        return np.concatenate(list(self.chunks()))


def bootstrap_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Resamples:
    """The bootstrap resamples of ``n`` test images every interval of a run uses."""
    return Resamples(n, resamples, seed)


def _index_chunks(indices: Resamples | np.ndarray) -> Iterator[np.ndarray]:
    return indices.chunks() if isinstance(indices, Resamples) else iter([indices])


def auc_per_row(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Binary ROC AUC of every row of ``scores`` ``[B, n]`` against ``positives`` ``[B, n]`` (bool),
    by the Mann-Whitney rank formula (ties count half, as in sklearn). A row without both
    classes has no AUC: NaN."""
    ranks = rankdata(scores, axis=1)  # average ranks for ties
    n_pos = positives.sum(1)
    n_neg = positives.shape[1] - n_pos
    rank_sum = (ranks * positives).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def bootstrap_auc(probs: np.ndarray, labels: np.ndarray, positive_index: int | None,
                  indices: Resamples | np.ndarray) -> np.ndarray:
    """AUC of each bootstrap resample: the positive class's AUC for binary data, else the
    macro one-vs-rest AUC (sklearn's ``multi_class="ovr"``); NaN where a class is missing."""
    return np.concatenate([_chunk_auc(probs, labels, positive_index, chunk)
                           for chunk in _index_chunks(indices)])


def _chunk_auc(probs: np.ndarray, labels: np.ndarray, positive_index: int | None,
               indices: np.ndarray) -> np.ndarray:
    sampled_labels = labels[indices]
    if positive_index is not None:
        return auc_per_row(probs[indices, positive_index], sampled_labels == positive_index)
    per_class = [auc_per_row(probs[indices, k], sampled_labels == k) for k in range(probs.shape[1])]
    return np.mean(per_class, axis=0)  # NaN if any class is absent, as sklearn refuses it


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """The percentile bootstrap interval, ignoring resamples where the statistic is undefined."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_ci(probs: np.ndarray, labels: np.ndarray, positive_index: int | None,
                 threshold: float | None, indices: Resamples | np.ndarray) -> dict:
    """95% percentile bootstrap intervals of accuracy and AUC over the test images."""
    correct = (predict(probs, positive_index, threshold) == labels).astype(float)
    accuracies = np.concatenate([correct[chunk].mean(1) for chunk in _index_chunks(indices)])
    return {"accuracy": percentile_interval(accuracies),
            "auc": percentile_interval(bootstrap_auc(probs, labels, positive_index, indices))}


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on paired decisions: only images where exactly one model is right
    count; under "equally good" each such image favours either model with probability 1/2, so
    the two-sided p-value is a binomial test of ``b_only`` out of ``a_only + b_only``."""
    a_only = int((correct_a & ~correct_b).sum())
    b_only = int((~correct_a & correct_b).sum())
    discordant = a_only + b_only
    p_value = 1.0 if discordant == 0 else float(binomtest(b_only, discordant, 0.5).pvalue)
    return {"a_only_correct": a_only, "b_only_correct": b_only, "p_value": p_value}


def paired_auc_difference(probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray,
                          positive_index: int | None, indices: Resamples | np.ndarray) -> list[float] | None:
    """95% paired bootstrap interval of AUC(b) - AUC(a): both models scored on the same resamples."""
    diff = (bootstrap_auc(probs_b, labels, positive_index, indices)
            - bootstrap_auc(probs_a, labels, positive_index, indices))
    return percentile_interval(diff)


def mean_std(values: list[float | None]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of the defined values."""
    defined = [float(v) for v in values if v is not None]
    if not defined:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0
    return {"mean": float(np.mean(defined)), "std": std, "n": len(defined)}
