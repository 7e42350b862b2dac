"""The baseline: the student trained alone with cross-entropy on the labels (the teacher's
fine-tuning too)."""

from __future__ import annotations

from kdistill.distill.method import DistillMethod
from kdistill.distill.registry import BASELINE, register


@register(BASELINE)
class CrossEntropy(DistillMethod):
    needs = frozenset()  # no teacher
    takes_mixed = True  # mixed targets are the base's cross-entropy's own

    def forward(self, batch, student, teacher=None) -> dict:
        logits = student(batch.images)
        ce = self.cross_entropy(logits, batch)
        return {"loss": ce, "ce": ce.detach(), "logits": logits.detach()}
