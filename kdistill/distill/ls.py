"""KD with logit standardization (Sun et al., CVPR 2024):
``ce_weight * CE + kd_weight * kd_loss(s, t, T, standardize=True)``. Defaults follow the authors'
code for KD + LS on CIFAR-100: KD weight 9, CE weight 0.1, base temperature 2."""

from __future__ import annotations

from kdistill.distill.losses import kd_loss
from kdistill.distill.method import DistillMethod
from kdistill.distill.registry import register


@register("ls")
class LogitStandardizedKD(DistillMethod):
    defaults = {"kd_weight": 9.0, "ce_weight": 0.1, "temperature": 2.0}
    search = {"kd_weight": (1.0, 20.0, True), "temperature": (1.0, 8.0, True)}
    takes_unlabeled = takes_mixed = True  # its distillation term reads no label
    two_class_note = ("logit standardization maps every 2-logit vector to +-1/sqrt(2); only the "
                      "argmax survives")

    def forward(self, batch, student, teacher) -> dict:
        logits = student(batch.images)  # [B, K]
        teacher_logits = teacher(batch)
        p = self.params
        ce = self.cross_entropy(logits, batch)
        kd = kd_loss(logits, teacher_logits, p["temperature"], standardize=True)
        loss = p["ce_weight"] * ce + p["kd_weight"] * kd
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "logits": logits.detach()}
