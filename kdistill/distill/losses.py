"""Pure loss functions: tensors in, scalar out; they never read the config."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s distillation term: ``KL(softmax(t/T) || softmax(s/T)) * T**2``.

    The KL divergence is summed over classes and averaged over the batch ("batchmean"), which is
    the mathematical KL per example. The ``T**2`` factor keeps the gradient's scale independent of
    T, so ``alpha`` means the same thing at every temperature. Shapes: ``[B, K]`` each.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)  # a fixed target
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def article_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The popular recipe's term as written: ``nn.KLDivLoss()`` (reduction "mean", which divides
    by batch x classes, not by batch) and no ``T**2`` factor. Kept only to compare against."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)
    return torch.nn.KLDivLoss()(log_p_student, p_teacher)


def distillation_objective(ce: torch.Tensor, kd: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * CE + alpha * KD``."""
    return (1.0 - alpha) * ce + alpha * kd
