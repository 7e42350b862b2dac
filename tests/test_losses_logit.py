"""Logit distillation losses beyond KD: DKD, DIST and logit standardization.

Golden values are worked out by hand on 2 samples x 3 classes. The logits are 2 * log(counts) at
temperature 2, so softmax(z / 2) = counts / sum(counts): every probability below is a fraction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdistill.distill.losses import (dist_loss, dkd_loss, kd_loss, pearson_rows,
                                     standardize_logits)

T = 2.0


def _logits(counts: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax at temperature 2 is ``counts`` normalised per row."""
    return 2.0 * torch.log(torch.tensor(counts, dtype=torch.float64))


# student p = [1/4, 1/4, 1/2] and [1/4, 1/2, 1/4]; teacher p = [1/2, 1/4, 1/4] and [1/3, 1/3, 1/3]
STUDENT = _logits([[1, 1, 2], [1, 2, 1]])
TEACHER = _logits([[2, 1, 1], [1, 1, 1]])
LABELS = torch.tensor([0, 2])


def _random_logits(batch: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = 3.0 * torch.randn(batch, classes, generator=g, dtype=torch.float64)
    t = 3.0 * torch.randn(batch, classes, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=g)
    return s, t, labels


# ---- DKD -------------------------------------------------------------------------------------

# Row 0, label 0. Binary [true, rest]: teacher (1/2, 1/2), student (1/4, 3/4).
#   TCKD_0 = 1/2 ln((1/2)/(1/4)) + 1/2 ln((1/2)/(3/4)) = 1/2 ln 2 + 1/2 ln(2/3)
# Non-target classes 1, 2: teacher (1/4, 1/4) -> (1/2, 1/2); student (1/4, 1/2) -> (1/3, 2/3).
#   NCKD_0 = 1/2 ln((1/2)/(1/3)) + 1/2 ln((1/2)/(2/3)) = 1/2 ln(3/2) + 1/2 ln(3/4)
# Row 1, label 2. Binary: teacher (1/3, 2/3), student (1/4, 3/4).
#   TCKD_1 = 1/3 ln((1/3)/(1/4)) + 2/3 ln((2/3)/(3/4)) = 1/3 ln(4/3) + 2/3 ln(8/9)
# Non-target classes 0, 1: teacher (1/3, 1/3) -> (1/2, 1/2); student (1/4, 1/2) -> (1/3, 2/3).
#   NCKD_1 = 1/2 ln(3/2) + 1/2 ln(3/4)
TCKD = (0.5 * math.log(2) + 0.5 * math.log(2 / 3) + math.log(4 / 3) / 3 + 2 / 3 * math.log(8 / 9)) / 2
NCKD = 0.5 * math.log(3 / 2) + 0.5 * math.log(3 / 4)  # both rows alike, so it is the mean


def test_dkd_golden_terms_separately():
    """alpha picks TCKD alone, beta NCKD alone, each times T**2 = 4, batch mean."""
    assert dkd_loss(STUDENT, TEACHER, LABELS, 1.0, 0.0, T).item() == pytest.approx(4 * TCKD, abs=1e-6)
    assert dkd_loss(STUDENT, TEACHER, LABELS, 0.0, 1.0, T).item() == pytest.approx(4 * NCKD, abs=1e-6)
    assert TCKD > 0.01 and NCKD > 0.01  # both terms are non-trivial here


def test_dkd_golden_weighted_sum():
    """The paper's CIFAR-100 weights alpha = 1, beta = 8: 4 * (TCKD + 8 NCKD) = 0.6037..."""
    expected = 4 * (TCKD + 8 * NCKD)
    assert dkd_loss(STUDENT, TEACHER, LABELS, 1.0, 8.0, T).item() == pytest.approx(expected, abs=1e-6)


def test_dkd_zero_when_student_equals_teacher():
    s, t, labels = _random_logits(6, 10, seed=0)
    assert dkd_loss(t.clone(), t, labels, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-12)


def test_dkd_stays_finite_for_a_confident_target():
    """A target logit 120 above the rest: p_rest = e^-120 underflows float32, so log(p_rest) taken
    from summed probabilities is -inf; as a log-sum-exp of log-probabilities it stays exact."""
    s = torch.tensor([[120.0, 0.0, -5.0]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0, 2.0]])
    loss = dkd_loss(s, t, torch.tensor([0]), 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    exact = dkd_loss(s.detach().double(), t.double(), torch.tensor([0]), 1.0, 8.0, 1.0)
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)


# ---- DIST ------------------------------------------------------------------------------------

# Inter-class (each sample over its classes), y from the fractions above:
#   row 0: y_s - 1/3 = [-1, -1, 2]/12, y_t - 1/3 = [2, -1, -1]/12
#          pearson = (-2 + 1 - 2) / (sqrt 6 * sqrt 6) = -1/2
#   row 1: y_t is uniform, so it centres to 0 and pearson = 0 / (0 + eps) = 0
#   inter = 1 - (-1/2 + 0) / 2 = 5/4
# Intra-class (each class over the 2 samples):
#   class 0: y_s = [1/4, 1/4] centres to 0 -> 0
#   class 1: y_s = [1/4, 1/2], y_t = [1/4, 1/3] -> both increase -> +1
#   class 2: y_s = [1/2, 1/4], y_t = [1/4, 1/3] -> opposite -> -1
#   intra = 1 - (0 + 1 - 1) / 3 = 1
# The eps = 1e-8 on products of norms >= 1/96 moves each correlation by < 1e-6.
INTER, INTRA = 5 / 4, 1.0


def test_dist_golden_terms_separately():
    """tau**2 = 4 times each relation term."""
    assert dist_loss(STUDENT, TEACHER, 1.0, 0.0, T).item() == pytest.approx(4 * INTER, abs=1e-6)
    assert dist_loss(STUDENT, TEACHER, 0.0, 1.0, T).item() == pytest.approx(4 * INTRA, abs=1e-6)


def test_dist_golden_weighted_sum():
    """beta = 2, gamma = 3: 4 * (2 * 5/4 + 3 * 1) = 22."""
    assert dist_loss(STUDENT, TEACHER, 2.0, 3.0, T).item() == pytest.approx(22.0, abs=1e-6)


def test_pearson_is_invariant_to_shift_and_positive_scale():
    """The reason DIST matches relations: a row shifted and scaled still correlates 1."""
    a = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]], dtype=torch.float64)
    np.testing.assert_allclose(pearson_rows(a, 3.0 * a + 1.0).numpy(), [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(pearson_rows(a, -a).numpy(), [-1.0, -1.0], atol=1e-6)


def test_dist_zero_when_student_equals_teacher():
    """Zero but for the eps: each correlation is n^2 / (n^2 + 1e-8), n a centred norm; columns of
    small probabilities have n^2 ~ 1e-3, hence a residue of order 1e-5 rather than 1e-12."""
    s, t, _ = _random_logits(8, 10, seed=1)
    assert dist_loss(t.clone(), t, 1.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-4)
    assert dist_loss(s, t, 1.0, 1.0, 1.0).item() > 0.1


# ---- logit standardization -------------------------------------------------------------------

# Each row z-scored with the unbiased std (divide by K - 1 = 2):
#   teacher [0, 1, 2]: mean 1, centred [-1, 0, 1], std sqrt(2/2) = 1 -> [-1, 0, 1]
#   teacher [3, 3, 0]: mean 2, centred [1, 1, -2], std sqrt(6/2) = sqrt 3 -> [1, 1, -2]/sqrt 3
#   student [5, 1, 3]: mean 3, centred [2, -2, 0], std sqrt(8/2) = 2 -> [1, -1, 0]
#   student [0, 0, 4]: mean 4/3, centred [-4, -4, 8]/3, std sqrt((16+16+64)/9/2) = 4/sqrt 3
#                      -> [-1, -1, 2]/sqrt 3
# The + 1e-7 on std >= 1 moves each z-score by < 1e-6 of its size.
LS_TEACHER = [[0.0, 1.0, 2.0], [3.0, 3.0, 0.0]]
LS_STUDENT = [[5.0, 1.0, 3.0], [0.0, 0.0, 4.0]]
R3 = math.sqrt(3)
LS_TEACHER_Z = [[-1.0, 0.0, 1.0], [1 / R3, 1 / R3, -2 / R3]]
LS_STUDENT_Z = [[1.0, -1.0, 0.0], [-1 / R3, -1 / R3, 2 / R3]]


def _kl_by_hand(student_z: list[list[float]], teacher_z: list[list[float]], temperature: float) -> float:
    """Batch mean of sum_k p_t log(p_t / p_s), softmax at ``temperature``, explicit sums."""
    rows = []
    for s_row, t_row in zip(student_z, teacher_z):
        e_s = [math.exp(v / temperature) for v in s_row]
        e_t = [math.exp(v / temperature) for v in t_row]
        p_s = [v / sum(e_s) for v in e_s]
        p_t = [v / sum(e_t) for v in e_t]
        rows.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)))
    return sum(rows) / len(rows)


def test_standardized_logits_golden():
    np.testing.assert_allclose(standardize_logits(torch.tensor(LS_TEACHER, dtype=torch.float64)).numpy(),
                               LS_TEACHER_Z, atol=1e-6)
    np.testing.assert_allclose(standardize_logits(torch.tensor(LS_STUDENT, dtype=torch.float64)).numpy(),
                               LS_STUDENT_Z, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_standardized_kd_golden(temperature):
    """KD on the hand z-scores, T**2 included (the authors' code keeps it)."""
    s = torch.tensor(LS_STUDENT, dtype=torch.float64)
    t = torch.tensor(LS_TEACHER, dtype=torch.float64)
    expected = _kl_by_hand(LS_STUDENT_Z, LS_TEACHER_Z, temperature) * temperature**2
    assert expected > 0.1
    assert kd_loss(s, t, temperature, standardize=True).item() == pytest.approx(expected, abs=1e-6)
    assert abs(kd_loss(s, t, temperature).item() - expected) > 0.1  # the flag changes the value


def test_standardized_kd_ignores_student_logit_shift_and_scale():
    """Only logit relations matter: a student's row scaled by 5 and shifted by 3 loses nothing."""
    s, t, _ = _random_logits(6, 10, seed=2)
    base = kd_loss(s, t, 2.0, standardize=True)
    assert kd_loss(5.0 * s + 3.0, t, 2.0, standardize=True).item() == pytest.approx(base.item(), abs=1e-6)
    assert abs(kd_loss(5.0 * s + 3.0, t, 2.0).item() - kd_loss(s, t, 2.0).item()) > 1e-2


def test_kd_loss_positional_call_unchanged():
    """Existing callers pass three positional arguments; the default does not standardize."""
    s, t, _ = _random_logits(4, 5, seed=3)
    assert kd_loss(s, t, 3.0).item() == kd_loss(s, t, 3.0, standardize=False).item()


# ---- shared contract -------------------------------------------------------------------------

LOSSES = {
    "dkd": lambda s, t, y: dkd_loss(s, t, y, 1.0, 8.0, 4.0),
    "dist": lambda s, t, y: dist_loss(s, t, 1.0, 1.0, 4.0),
    "ls": lambda s, t, y: kd_loss(s, t, 2.0, standardize=True),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_reaches_student_only(name):
    """The teacher is a fixed target: even a teacher tensor that requires grad gets none."""
    s, t, labels = _random_logits(5, 4, seed=4)
    s.requires_grad_(True)
    t.requires_grad_(True)
    LOSSES[name](s, t, labels).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None or torch.count_nonzero(t.grad) == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_batch_mean_duplicated_batch_same_loss(name):
    """Repeating the batch leaves the loss unchanged: a mean over samples, not a sum."""
    s, t, labels = _random_logits(5, 4, seed=5)
    once = LOSSES[name](s, t, labels).item()
    thrice = LOSSES[name](s.repeat(3, 1), t.repeat(3, 1), labels.repeat(3)).item()
    assert thrice == pytest.approx(once, abs=1e-6)


# ---- two classes -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_classes_dkd_non_target_term_is_zero(seed):
    """One non-target class: its softmax is 1 for both, so NCKD = 0 and DKD = alpha x KD."""
    s, t, labels = _random_logits(16, 2, seed)
    assert dkd_loss(s, t, labels, 0.0, 1.0, 4.0).item() == 0.0
    assert dkd_loss(s, t, labels, 1.0, 0.0, 4.0).item() == pytest.approx(kd_loss(s, t, 4.0).item(), abs=1e-12)
    s3, t3, labels3 = _random_logits(16, 3, seed)
    assert dkd_loss(s3, t3, labels3, 0.0, 1.0, 4.0).item() > 1e-3  # not so with three classes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_classes_standardized_logits_are_plus_minus_one_over_root_two(seed):
    """[a, b] centres to +-(a - b)/2 with unbiased std d = |a - b|/sqrt 2: z = +-1/sqrt 2 whatever
    a and b are, but for the 1e-7 added to the std: |z| = (1/sqrt 2) * d / (d + 1e-7)."""
    s, _, _ = _random_logits(16, 2, seed)
    z = standardize_logits(s)
    d = (s[:, 0] - s[:, 1]).abs() / math.sqrt(2)
    expected = (d / (d + 1e-7) / math.sqrt(2)).unsqueeze(1).expand(-1, 2)
    np.testing.assert_allclose(z.abs().numpy(), expected.numpy(), rtol=1e-12)
    np.testing.assert_allclose(z.abs().numpy(), 1 / math.sqrt(2), atol=1e-5)
    assert torch.equal(z.argmax(dim=1), s.argmax(dim=1))  # only the argmax survives


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_classes_dist_inter_class_pearson_is_plus_minus_one(seed):
    """y = [p, 1 - p] centres to (p - 1/2)[1, -1]: any two such rows correlate +-1, but for the
    eps added to the product of norms n = 2 |p_s - 1/2| |p_t - 1/2|: |r| = n / (n + 1e-8)."""
    s, t, _ = _random_logits(16, 2, seed)
    y_s, y_t = torch.softmax(s / 4.0, dim=1), torch.softmax(t / 4.0, dim=1)
    r = pearson_rows(y_s, y_t)
    n = 2 * (y_s[:, 0] - 0.5).abs() * (y_t[:, 0] - 0.5).abs()
    np.testing.assert_allclose(r.abs().numpy(), (n / (n + 1e-8)).numpy(), rtol=1e-10)
    np.testing.assert_allclose(r.abs().numpy(), 1.0, atol=1e-5)
    same_argmax = (s.argmax(dim=1) == t.argmax(dim=1)).double()
    np.testing.assert_allclose(r.sign().numpy(), (2 * same_argmax - 1).numpy())


def test_the_methods_degenerate_for_two_classes_say_why_in_their_own_files():
    import kdistill.distill  # noqa: F401  (registers the methods)
    from kdistill.distill.registry import METHODS, two_class_note

    for method in ("dkd", "ls", "dist"):  # the three whose degeneracy the tests above check
        reason = two_class_note(method, 2)
        assert isinstance(reason, str) and reason
        assert two_class_note(method, 10) is None
    assert {name for name in METHODS if two_class_note(name, 2)} == {"dkd", "ls", "dist"}
