"""Decision threshold and temperature scaling, both fitted on the VALIDATION split only.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T`` chosen to minimize
the negative log-likelihood of the validation labels; it changes confidence, never the arg-max,
so accuracy at the arg-max and AUC stay as they are while the probabilities become honest (ECE).

The decision threshold (binary data only) is applied to the positive class's temperature-scaled
probability, so it is chosen on those same probabilities. Both rules maximize the same quantity:
for two classes Youden's J = sensitivity + specificity - 1 = 2 * balanced accuracy - 1. They differ
only in where inside the best interval the threshold sits:

- every validation operating point comes from ``sklearn.metrics.roc_curve`` (all points kept);
  among operating points with the same best J, the one with the HIGHER sensitivity wins (for a
  screening task, a missed positive usually costs more than a false alarm);
- ``youden``: the threshold is that operating point's ``roc_curve`` threshold, i.e. the lowest
  validation score still called positive (the textbook implementation);
- ``balanced_accuracy`` (default): the midpoint between that score and the next lower validation
  score, so the same validation decisions are made with the widest margin on either side.

Nothing here reads the test split: callers pass validation logits and labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_curve

from kdistill.log import log
from kdistill.eval.metrics import expected_calibration_error

THRESHOLD_RULES = ("balanced_accuracy", "youden")
LOG_T_BOUNDS = (-4.0, 4.0)  # T between 0.018 and 55: wider would only fit degenerate logits


def scaled_probs(logits: torch.Tensor | np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities ``softmax(logits / T)`` as float64 numpy ``[N, K]``."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    return torch.softmax(logits / temperature, dim=1).numpy()


def fit_temperature(logits: torch.Tensor | np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` minimizing the mean NLL of ``softmax(logits / T)`` on these (validation) labels.

    One-dimensional and smooth in ``log T``, so a bounded scalar search is exact enough and needs
    no learning rate."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / np.exp(log_t), targets))

    if bool((logits.argmax(1) == targets).all()):
        # Every validation image is already right: the NLL keeps falling as T -> 0, so validation
        # cannot say how confident the model should be, and sharpening without limit would make
        # every later mistake a certain one. Leave the logits as they are.
        log.info("temperature scaling: every validation prediction is correct, nothing bounds T; keeping T = 1")
        return 1.0
    best = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-5})
    # Keep T = 1 unless scaling really lowers the NLL (e.g. an already calibrated model).
    return float(np.exp(best.x)) if best.fun < nll(0.0) else 1.0


def choose_threshold(positive_probs: np.ndarray, positives: np.ndarray,
                     rule: str = "balanced_accuracy") -> float | None:
    """The validation threshold on the positive-class probability (see the module docstring);
    ``None`` when validation lacks one of the classes (no ROC curve to choose from)."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule {rule!r}: choose one of {', '.join(THRESHOLD_RULES)}")
    positives = np.asarray(positives, dtype=bool)
    if positives.all() or not positives.any():
        return None
    fpr, tpr, thresholds = roc_curve(positives, positive_probs, drop_intermediate=False)
    j = tpr - fpr
    best = np.flatnonzero(j == j.max())[-1]  # roc_curve orders by falling threshold: last = most sensitive
    chosen = float(min(thresholds[best], 1.0))  # roc_curve's first threshold is +inf (nothing positive)
    if rule == "youden":
        return chosen
    lower = positive_probs[positive_probs < chosen]
    return (chosen + (float(lower.max()) if len(lower) else 0.0)) / 2


def calibrate(logits: torch.Tensor | np.ndarray, labels: np.ndarray, positive_index: int | None, *,
              rule: str = "balanced_accuracy", temperature: bool = True) -> dict:
    """Temperature, then threshold, from validation logits and labels: the ``model.json`` entries
    ``temperature``, ``threshold``, ``threshold_rule`` and a ``calibration`` record of what they
    were fitted on."""
    labels = np.asarray(labels)
    t = fit_temperature(logits, labels) if temperature else 1.0
    probs = scaled_probs(logits, t)
    threshold = None
    if positive_index is not None:
        threshold = choose_threshold(probs[:, positive_index], labels == positive_index, rule)
        if threshold is None:
            threshold = 0.5  # validation has one class only: keep the neutral threshold
    record = {"fitted_on": "val", "images": int(len(labels)),
              "val_ece_uncalibrated": expected_calibration_error(scaled_probs(logits), labels),
              "val_ece": expected_calibration_error(probs, labels)}
    return {"temperature": t, "threshold": threshold,
            "threshold_rule": rule if positive_index is not None else None, "calibration": record}
