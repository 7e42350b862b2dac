"""DIST (Huang et al., NeurIPS 2022): ``ce_weight * CE + weight * dist_loss(s, t, beta, gamma, tau)``.
Defaults are the authors' ImageNet recipe: beta = gamma = 1, weight 2, CE weight 1, tau 1 (their
CIFAR-100 recipe uses tau 4)."""

from __future__ import annotations

from kdistill.distill.losses import dist_loss
from kdistill.distill.method import DistillMethod
from kdistill.distill.registry import register


@register("dist")
class DIST(DistillMethod):
    defaults = {"beta": 1.0, "gamma": 1.0, "weight": 2.0, "temperature": 1.0, "ce_weight": 1.0}
    search = {"weight": (0.5, 8.0, True), "temperature": (1.0, 8.0, True)}
    takes_unlabeled = takes_mixed = True  # its distillation term reads no label
    two_class_note = ("DIST's inter-class correlation is +-1 for two classes; only the argmax "
                      "agreement survives")

    def forward(self, batch, student, teacher) -> dict:
        logits = student(batch.images)  # [B, K]
        teacher_logits = teacher(batch)
        p = self.params
        ce = self.cross_entropy(logits, batch)
        dist = dist_loss(logits, teacher_logits, p["beta"], p["gamma"], p["temperature"])
        loss = p["ce_weight"] * ce + p["weight"] * dist
        return {"loss": loss, "ce": ce.detach(), "dist": dist.detach(), "logits": logits.detach()}
