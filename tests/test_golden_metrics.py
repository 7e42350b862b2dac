"""Golden values worked out by hand (the arithmetic is in the comments), not by the code under test:
the headline metrics at a threshold other than 0.5, a three-class case, ECE over known bins and
the MACs of small models."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from kdistill.models.size import count_macs, count_parameters
from kdistill.eval.metrics import classification_metrics, expected_calibration_error
from kdistill.models import build_model

# Binary: positive class index 1, threshold 0.3 (called positive when p >= 0.3).
#   positives (label 1): p = 0.9, 0.6, 0.35 -> positive (TP = 3); 0.2 -> negative (FN = 1)
#   negatives (label 0): p = 0.5, 0.32 -> positive (FP = 2); 0.1, 0.05 -> negative (TN = 2)
POSITIVE_P = np.array([0.9, 0.6, 0.35, 0.2, 0.5, 0.32, 0.1, 0.05])
BINARY_LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0])


def binary_probs(positive_index: int = 1) -> np.ndarray:
    columns = [1 - POSITIVE_P, POSITIVE_P] if positive_index == 1 else [POSITIVE_P, 1 - POSITIVE_P]
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("positive_index", [1, 0])
def test_binary_metrics_at_threshold_0_3(positive_index):
    """The same decisions whichever column holds the positive class."""
    labels = BINARY_LABELS if positive_index == 1 else 1 - BINARY_LABELS
    m = classification_metrics(binary_probs(positive_index), labels, positive_index, 0.3)
    assert m["sensitivity"] == pytest.approx(3 / 4)  # TP / (TP + FN) = 3 / 4
    assert m["specificity"] == pytest.approx(2 / 4)  # TN / (TN + FP) = 2 / 4
    assert m["balanced_accuracy"] == pytest.approx(0.625)  # (0.75 + 0.5) / 2
    assert m["accuracy"] == pytest.approx(5 / 8)  # (TP + TN) / 8
    # AUC: for each positive, the negatives it outscores (of 4): 0.9 -> 4, 0.6 -> 4,
    # 0.35 -> 3 (all but 0.5), 0.2 -> 2 (0.1, 0.05); 13 of 16 pairs.
    assert m["auc"] == pytest.approx(13 / 16)
    # Rows are true classes, columns predicted, in class-index order.
    expected = [[2, 2], [1, 3]] if positive_index == 1 else [[3, 1], [2, 2]]
    assert m["confusion_matrix"] == expected


def test_binary_threshold_is_applied_not_0_5():
    """At 0.5 the same scores give TP = 2 (0.9, 0.6) and FP = 1 (0.5): other numbers, so the
    threshold-0.3 values above cannot come from the arg-max."""
    m = classification_metrics(binary_probs(), BINARY_LABELS, 1, 0.5)
    assert (m["sensitivity"], m["specificity"]) == (pytest.approx(2 / 4), pytest.approx(3 / 4))
    assert m["confusion_matrix"] == [[3, 1], [2, 2]]


def test_three_class_metrics():
    """Arg-max decisions; sensitivity/specificity are binary only."""
    probs = np.array([[0.7, 0.2, 0.1],   # label 0 -> 0 right
                      [0.6, 0.3, 0.1],   # label 0 -> 0 right
                      [0.2, 0.5, 0.3],   # label 0 -> 1 wrong
                      [0.1, 0.8, 0.1],   # label 1 -> 1 right
                      [0.2, 0.3, 0.5],   # label 1 -> 2 wrong
                      [0.1, 0.2, 0.7]])  # label 2 -> 2 right
    labels = np.array([0, 0, 0, 1, 1, 2])
    m = classification_metrics(probs, labels, None, None)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx(13 / 18)  # recalls (2/3 + 1/2 + 1) / 3
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["sensitivity"] is None and m["specificity"] is None
    # One-vs-rest AUC, macro: class 0 scores 0.7, 0.6, 0.2 vs 0.1, 0.2, 0.1 -> 3 + 3 + 2.5 (a tie
    # counts half) = 8.5 of 9; class 1 scores 0.8, 0.3 vs 0.2, 0.3, 0.5, 0.2 -> 4 + 2.5 = 6.5 of 8;
    # class 2 scores 0.7 vs five lower ones -> 5 of 5. Mean (17/18 + 13/16 + 1) / 3 = 397/432.
    assert m["auc"] == pytest.approx(397 / 432)


def test_ece_over_five_known_bins():
    """Bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]; a confidence on an edge belongs to the
    lower bin (0.8 is in (.6, .8]).
      (.4, .6]: confidences .55 right, .55 wrong      -> |0.5 - 0.55| = 0.05,   weight 2/6
      (.6, .8]: .8 right                              -> |1 - 0.8|    = 0.2,    weight 1/6
      (.8, 1]:  .9 right, .9 right, .9 wrong          -> |2/3 - 0.9|  = 7/30,   weight 3/6
    ECE = 2/6 * 0.05 + 1/6 * 0.2 + 3/6 * 7/30 = 1/60 + 2/60 + 7/60 = 1/6."""
    confidence = np.array([0.55, 0.55, 0.8, 0.9, 0.9, 0.9])
    correct = np.array([True, False, True, True, True, False])
    probs = np.stack([confidence, 1 - confidence], axis=1)  # class 0 is the predicted class
    labels = np.where(correct, 0, 1)
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(1 / 6)


def test_macs_of_a_small_cnn_counted_by_hand():
    """Conv 3->4, 3x3, padding 1 at 8x8: 4 channels x 64 positions x (3 x 3 x 3) = 6,912 MACs;
    Linear 64 -> 2: 128 MACs. Batch norm, ReLU and pooling are not multiply-accumulates of a
    matrix product and are not counted. Total 7,040."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    assert count_macs(model, 8, 3) == 6912 + 128


def test_reference_student_macs_and_parameters_by_hand():
    """At 224x224: conv 4 x 224 x 224 x 27 = 5,419,008 and linear 4 x 112 x 112 x 2 = 100,352 MACs
    (5,519,360 in all); parameters: conv 3*4*9 + 4 = 112, batch norm 8, linear 50,176*2 + 2 =
    100,354 (100,474 in all)."""
    model = build_model("reference_student", 2, input_size=224)
    assert count_macs(model, 224, 3) == 5_419_008 + 100_352
    assert count_parameters(model) == 112 + 8 + 100_354
