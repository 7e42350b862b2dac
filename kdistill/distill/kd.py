"""Hinton knowledge distillation: ``(1 - alpha) * CE(s, y) + alpha * kd_loss(s, t, T)``."""

from __future__ import annotations

from kdistill.distill.losses import distillation_objective, kd_loss
from kdistill.distill.method import DistillMethod
from kdistill.distill.registry import register


@register("kd")
class KnowledgeDistillation(DistillMethod):
    shared = ("alpha", "temperature")  # from distill.alpha and distill.temperature (and tune's ranges)
    # The KD term reads no label: on an unlabelled row it is the whole signal, and on a mixed view
    # the teacher's output is for that very mixed image.
    takes_unlabeled = True
    takes_mixed = True

    def forward(self, batch, student, teacher) -> dict:
        logits = student(batch.images)  # [B, K]
        teacher_logits = teacher(batch)  # [B, K], no grad
        ce = self.cross_entropy(logits, batch)
        kd = kd_loss(logits, teacher_logits, self.params["temperature"])
        loss = distillation_objective(ce, kd, self.params["alpha"])
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "logits": logits.detach()}
