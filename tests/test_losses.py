"""The distillation loss contract: KL(teacher || student) at temperature T, batchmean, times T**2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdistill.distill.losses import article_kd_loss, distillation_objective, kd_loss

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[0.5, 1.5, -0.5], [2.0, 0.0, 1.0]]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kl_by_hand(student, teacher, temperature) -> float:
    """sum_k p_t log(p_t / p_s) per row, averaged over rows, written out with explicit sums."""
    p_s = _softmax(np.asarray(student) / temperature)
    p_t = _softmax(np.asarray(teacher) / temperature)
    rows = [sum(p_t[i, k] * math.log(p_t[i, k] / p_s[i, k]) for k in range(p_t.shape[1]))
            for i in range(p_t.shape[0])]
    return sum(rows) / len(rows)


def test_kd_loss_golden_value():
    """Two classes at T=1: teacher (3/4, 1/4) vs uniform student gives 3/4 ln 1.5 + 1/4 ln 0.5."""
    student = torch.zeros(1, 2, dtype=torch.float64)
    teacher = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.1308...
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_matches_hand_computed_kl(temperature):
    """Batch mean of KL(teacher || student), the direction and scale of the contract, times T**2."""
    s = torch.tensor(STUDENT, dtype=torch.float64)
    t = torch.tensor(TEACHER, dtype=torch.float64)
    expected = _kl_by_hand(STUDENT, TEACHER, temperature) * temperature**2
    reverse = _kl_by_hand(TEACHER, STUDENT, temperature) * temperature**2
    assert abs(expected - reverse) > 1e-3  # the example tells the two directions apart
    assert kd_loss(s, t, temperature).item() == pytest.approx(expected, rel=1e-10)


def test_kd_loss_averages_over_batch_not_sum():
    """Repeating the batch does not change the value (batchmean), unlike a sum over rows."""
    s = torch.tensor(STUDENT, dtype=torch.float64)
    t = torch.tensor(TEACHER, dtype=torch.float64)
    once = kd_loss(s, t, 2.0)
    assert kd_loss(s.repeat(3, 1), t.repeat(3, 1), 2.0).item() == pytest.approx(once.item(), rel=1e-12)


def test_kd_loss_is_zero_for_identical_logits():
    """A student that matches the teacher has nothing left to learn."""
    t = torch.tensor(TEACHER)
    assert kd_loss(t.clone(), t, 3.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("classes", [2, 3, 10])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_article_loss_is_kd_loss_divided_by_classes_and_t_squared(classes, temperature):
    """nn.KLDivLoss()'s "mean" divides the summed KL by B*K (not B) and has no T**2, so
    kd_loss = K * T**2 * article_kd_loss; at T=1 the article's term is exactly 1/K of the true KL."""
    g = torch.Generator().manual_seed(classes)
    s = torch.randn(5, classes, generator=g, dtype=torch.float64)
    t = torch.randn(5, classes, generator=g, dtype=torch.float64)
    ratio = kd_loss(s, t, temperature) / article_kd_loss(s, t, temperature)
    assert ratio.item() == pytest.approx(classes * temperature**2, rel=1e-10)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_gradient_on_student_logits(temperature):
    """d kd_loss / d s = T * (softmax(s/T) - softmax(t/T)) / B: the T**2 factor keeps it O(T**0..1)."""
    s = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(TEACHER, dtype=torch.float64)
    kd_loss(s, t, temperature).backward()
    expected = temperature * (_softmax(np.asarray(STUDENT) / temperature)
                              - _softmax(np.asarray(TEACHER) / temperature)) / len(STUDENT)
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-10, atol=1e-14)


def test_kd_loss_gradient_reaches_student_only():
    """The teacher is a fixed target: even a teacher tensor that requires grad must get none."""
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(TEACHER, requires_grad=True)
    kd_loss(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None or torch.count_nonzero(t.grad) == 0


def test_distillation_objective_weights():
    """(1 - alpha) * CE + alpha * KD, the contract's total objective."""
    ce, kd = torch.tensor(2.0), torch.tensor(10.0)
    assert distillation_objective(ce, kd, 0.0).item() == pytest.approx(2.0)
    assert distillation_objective(ce, kd, 1.0).item() == pytest.approx(10.0)
    assert distillation_objective(ce, kd, 0.25).item() == pytest.approx(0.75 * 2.0 + 0.25 * 10.0)
