"""Decoupled KD (Zhao et al., CVPR 2022): ``CE + w(epoch) * dkd_loss(s, t, y, alpha, beta, T)``,
with ``w`` rising linearly from ``1 / warmup`` at epoch 1 to 1 at epoch ``warmup`` (the authors'
code). Defaults are the paper's CIFAR-100 recipe: alpha 1, beta 8, T 4, 20 warm-up epochs; a run
of fewer epochs never reaches the full weight, so short runs may want ``warmup`` lower."""

from __future__ import annotations

from kdistill.distill.losses import dkd_loss
from kdistill.distill.method import DistillMethod
from kdistill.distill.registry import register


@register("dkd")
class DecoupledKD(DistillMethod):
    defaults = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20, "ce_weight": 1.0}
    search = {"beta": (1.0, 16.0, True), "temperature": (1.0, 8.0, True)}
    # takes_unlabeled, takes_mixed: False, its terms split the classes at the hard label
    two_class_note = ("DKD's non-target term is zero for two classes (one non-target class); what "
                      "remains is alpha x KD")

    def warmup_weight(self) -> float:
        warmup = self.params["warmup"]
        return 1.0 if warmup <= 0 else min(self.epoch / warmup, 1.0)

    def forward(self, batch, student, teacher) -> dict:
        logits = student(batch.images)  # [B, K]
        teacher_logits = teacher(batch)  # [B, K], no grad
        p = self.params
        ce = self.cross_entropy(logits, batch)
        dkd = dkd_loss(logits, teacher_logits, batch.labels, p["alpha"], p["beta"], p["temperature"])
        loss = p["ce_weight"] * ce + self.warmup_weight() * dkd
        return {"loss": loss, "ce": ce.detach(), "dkd": dkd.detach(), "logits": logits.detach()}
