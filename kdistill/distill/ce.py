"""The baseline: the student trained alone with cross-entropy on the labels."""

from __future__ import annotations


from kdistill.distill.registry import register


@register("ce")
class CrossEntropy:
    needs_teacher = False

    def __init__(self, class_weights=None):
        self.class_weights = class_weights

    def __call__(self, batch, student, teacher=None) -> dict:
        logits = student(batch.images)
        ce = batch.cross_entropy(logits, self.class_weights)  # labelled rows; mixed views: mixed targets
        return {"loss": ce, "ce": ce.detach(), "logits": logits.detach()}
