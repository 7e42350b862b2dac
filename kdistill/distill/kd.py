"""Hinton knowledge distillation: ``(1 - alpha) * CE(s, y) + alpha * kd_loss(s, t, T)``."""

from __future__ import annotations


from kdistill.distill.losses import distillation_objective, kd_loss
from kdistill.distill.registry import register


@register("kd")
class KnowledgeDistillation:
    needs_teacher = True
    shared = ("alpha", "temperature")  # from distill.alpha and distill.temperature (and tune's ranges)

    def __init__(self, alpha: float = 0.5, temperature: float = 4.0, class_weights=None):
        self.alpha = alpha
        self.temperature = temperature
        self.class_weights = class_weights

    def __call__(self, batch, student, teacher) -> dict:
        logits = student(batch.images)  # [B, K]
        teacher_logits = teacher(batch)  # [B, K], no grad
        ce = batch.cross_entropy(logits, self.class_weights)  # labelled rows; mixed views: mixed targets
        kd = kd_loss(logits, teacher_logits, self.temperature)
        loss = distillation_objective(ce, kd, self.alpha)
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "logits": logits.detach()}
