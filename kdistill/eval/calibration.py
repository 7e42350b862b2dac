"""Decision threshold and temperature scaling. Temperature is fitted on the VALIDATION split only;
the threshold comes from validation too, or from the training labels' class shares (``prior``).

Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T`` chosen to minimize
the negative log-likelihood of the validation labels; it changes confidence, never the arg-max,
so accuracy at the arg-max and AUC stay as they are while the probabilities become honest (ECE).

The decision threshold (binary data only) is applied to the positive class's temperature-scaled
probability: the positive class wins at probability >= threshold. Two rules fit it on validation,
and both maximize the same quantity: for two classes Youden's J = sensitivity + specificity - 1 =
2 * balanced accuracy - 1. They differ only in where inside the best interval the threshold sits:

- every validation operating point comes from ``sklearn.metrics.roc_curve`` (all points kept);
  among operating points with the same best J, the one with the HIGHER sensitivity wins (for a
  screening task, a missed positive usually costs more than a false alarm);
- ``youden``: the threshold is that operating point's ``roc_curve`` threshold, i.e. the lowest
  validation score still called positive (the textbook implementation);
- ``balanced_accuracy`` (default): the midpoint between that score and the next lower validation
  score, so the same validation decisions are made with the widest margin on either side.

On a nearly separable validation split both sit among a handful of borderline images, a cut that
need not transfer to other data. A third rule widens what it is fitted on:

- ``battery``: the ``balanced_accuracy`` rule on validation's scores pooled with the scores of
  every rendering of the shift battery (kdistill/data/shifts.py): the same images under other
  framing, exposure, sharpness, noise and compression, so the cut sits where it keeps its balance
  when acquisition changes, not only among the clean split's borderline images.

Two rules fit nothing to validation's scores:

- ``prior``: the threshold is the positive class's share of the TRAINING labels, pi. For
  calibrated probabilities p, calling positive when p > pi maximizes expected balanced accuracy:
  reweighting both classes to equal priors turns the posterior odds p/(1-p) into
  (p/(1-p)) * ((1-pi)/pi), which exceeds 1 exactly when p > pi (the Bayes rule under equal
  priors). It assumes the model's probabilities reflect the training shares; a model trained
  with ``class_weighting: balanced`` already learnt equal priors, and ``argmax`` suits it instead.
- ``argmax``: the threshold is 0.5, the arg-max decision on the scaled probabilities.

Nothing here reads the test split: callers pass validation logits and labels, and for ``prior``
the training labels' positive fraction.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_curve

from kdistill.log import log
from kdistill.eval.metrics import expected_calibration_error

# Keep in sync with the Literal of ``CalibrationConfig.threshold_rule`` in kdistill/config.py.
THRESHOLD_RULES = ("balanced_accuracy", "youden", "battery", "prior", "argmax")
NEEDS_BATTERY = ("battery",)  # rules fitted on the battery's renderings as well
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


def positive_fraction(labels: np.ndarray, positive_index: int) -> float:
    """The positive class's share of the labelled images (label -1, no label, is left out)."""
    labels = np.asarray(labels)
    labelled = labels[labels >= 0]
    if len(labelled) == 0:
        raise ValueError("threshold rule 'prior': the training split has no labelled images")
    return float((labelled == positive_index).mean())


def choose_threshold(positive_probs: np.ndarray, positives: np.ndarray,
                     rule: str = "balanced_accuracy", *,
                     train_positive_fraction: float | None = None) -> float | None:
    """The threshold on the positive-class probability (see the module docstring); ``None`` when a
    validation rule meets validation lacking one of the classes (no ROC curve to choose from)."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule {rule!r}: choose one of {', '.join(THRESHOLD_RULES)}")
    if rule == "argmax":
        return 0.5
    if rule == "prior":
        return _prior_threshold(train_positive_fraction)
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
    return (chosen + (float(lower.max()) if len(lower) else 0.0)) / 2  # balanced_accuracy and battery


def _prior_threshold(train_positive_fraction: float | None) -> float:
    """The ``prior`` rule's threshold: the training positive fraction, which must lie inside (0, 1)."""
    if train_positive_fraction is None:
        raise ValueError("threshold rule 'prior' needs the training labels' positive fraction "
                         "(train_positive_fraction); this caller did not pass it")
    if not 0.0 < train_positive_fraction < 1.0:
        raise ValueError(f"threshold rule 'prior': the training labels hold one class only "
                         f"(positive fraction {train_positive_fraction}); no prior to threshold at")
    return float(train_positive_fraction)


def calibrate(logits: torch.Tensor | np.ndarray, labels: np.ndarray, positive_index: int | None, *,
              rule: str = "balanced_accuracy", temperature: bool = True,
              train_positive_fraction: float | None = None,
              shifted_logits: list[torch.Tensor] | None = None) -> dict:
    """Temperature, then threshold, from validation logits and labels: the ``model.json`` entries
    ``temperature``, ``threshold``, ``threshold_rule`` and a ``calibration`` record of what they
    were fitted on. ``train_positive_fraction``: the training labels' positive share, which the
    ``prior`` rule needs; ``shifted_logits``: the logits of the same images under each rendering
    of the shift battery, which the ``battery`` rule needs (the temperature is fitted on the clean
    logits alone)."""
    labels = np.asarray(labels)
    t = fit_temperature(logits, labels) if temperature else 1.0
    probs = scaled_probs(logits, t)
    threshold = None
    if positive_index is not None:
        scores, truth = _rule_scores(probs, labels, rule, shifted_logits, t)
        threshold = choose_threshold(scores[:, positive_index], truth == positive_index, rule,
                                     train_positive_fraction=train_positive_fraction)
        if threshold is None:
            threshold = 0.5  # validation has one class only: keep the neutral threshold
    record = {"fitted_on": "val", "images": int(len(labels)),
              "val_ece_uncalibrated": expected_calibration_error(scaled_probs(logits), labels),
              "val_ece": expected_calibration_error(probs, labels)}
    if positive_index is not None and rule == "prior":
        record["train_positive_fraction"] = train_positive_fraction  # the threshold's source
    if positive_index is not None and rule in NEEDS_BATTERY:
        record["battery_renderings"] = len(shifted_logits)
    return {"temperature": t, "threshold": threshold,
            "threshold_rule": rule if positive_index is not None else None, "calibration": record}


def describe_fit(calibration: dict | None) -> str:
    """Where a model's threshold was fitted, in words (for logs and reports)."""
    calibration = calibration or {}
    if calibration.get("fitted_on") == "site":
        return f"site sample {calibration.get('folder')} ({calibration.get('images')} images)"
    if "train_positive_fraction" in calibration:
        return "the training labels' positive share"
    if calibration.get("images") is not None:
        extra = " and their shift battery" if calibration.get("battery_renderings") else ""
        return f"validation ({calibration['images']} images{extra})"
    return "not recorded"


def _rule_scores(probs: np.ndarray, labels: np.ndarray, rule: str, shifted_logits, temperature: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities and labels a rule fits its threshold on: validation's, plus, for the
    ``battery`` rule, those of every battery rendering of the same images."""
    if rule not in NEEDS_BATTERY:
        return probs, labels
    if not shifted_logits:
        raise ValueError(f"threshold rule {rule!r} needs the shift battery's logits (shifted_logits)")
    shifted = [scaled_probs(logits, temperature) for logits in shifted_logits]
    return np.concatenate([probs, *shifted]), np.tile(labels, 1 + len(shifted))
