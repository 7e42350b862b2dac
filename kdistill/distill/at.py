"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): ``CE + beta * sum_j
mean((Q_s,j - Q_t,j)**2)``, with ``Q`` each layer's L2-normalized spatial attention map (channel
mean of ``A**p``, p = 2) and beta 1000, as in the authors' code. Every student layer is paired with
a teacher layer (default: the two smallest resolutions of each); the student's map is resized to
the teacher's."""

from __future__ import annotations

import torch

from kdistill.distill.features import FeatureMethod
from kdistill.distill.losses import attention_transfer_loss
from kdistill.distill.registry import register


@register("at")
class AttentionTransfer(FeatureMethod):
    name = "at"
    defaults = {"beta": 1000.0, "p": 2, "ce_weight": 1.0, "student_layers": None, "teacher_layers": None}
    positive = ("p",)
    search = {"beta": (100.0, 10000.0, True)}

    def feature_loss(self, student_outs: list[torch.Tensor], teacher_outs: list[torch.Tensor]) -> torch.Tensor:
        return attention_transfer_loss([s.float() for s in student_outs], [t.float() for t in teacher_outs],
                                       self.params["beta"], int(self.params["p"]))
