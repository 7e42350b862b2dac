"""Relational KD (Park et al., CVPR 2019) on the penultimate embedding (each model's classifier
head input by default): ``CE + rkd_loss(s, t, distance_weight, angle_weight)`` with the distance
and angle weights 25 and 50 of mdistiller. Only relations between the batch's samples are matched,
so student and teacher widths may differ and no connector is needed. Cost grows as B**3 (angles)."""

from __future__ import annotations

import torch

from kdistill.distill.features import EmbeddingMethod
from kdistill.distill.losses import rkd_loss
from kdistill.distill.registry import register


@register("rkd")
class RelationalKD(EmbeddingMethod):
    name = "rkd"
    defaults = {"distance_weight": 25.0, "angle_weight": 50.0, "ce_weight": 1.0,
                "student_embedding": None, "teacher_embedding": None}
    search = {"distance_weight": (1.0, 100.0, True), "angle_weight": (1.0, 200.0, True)}

    def feature_loss(self, student_outs: list[torch.Tensor], teacher_outs: list[torch.Tensor]) -> torch.Tensor:
        return rkd_loss(student_outs[0].float().flatten(1), teacher_outs[0].float().flatten(1),
                        self.params["distance_weight"], self.params["angle_weight"])
