"""The baseline: the student trained alone with cross-entropy on the labels."""

from __future__ import annotations

import torch.nn.functional as F

from kdistill.distill.registry import register


@register("ce")
class CrossEntropy:
    needs_teacher = False

    def __init__(self, class_weights=None):
        self.class_weights = class_weights

    def __call__(self, batch, student, teacher=None) -> dict:
        logits = student(batch.images)
        ce = F.cross_entropy(logits, batch.labels, weight=self.class_weights)
        return {"loss": ce, "ce": ce.detach(), "logits": logits.detach()}
