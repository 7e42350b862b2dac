"""FitNet (Romero et al., ICLR 2015), trained in one stage as in mdistiller:
``CE + weight * MSE(regressor(resize(student map)), teacher map)``, where the regressor is a learned
1x1 convolution from the student's channels to the teacher's (owned by the method: trained with the
student, saved in the resume state, never exported) and the student's map is resized to the
teacher's spatial size. One hint pair: the first of the chosen layers (default: the student's and
the teacher's stage at the second-smallest resolution). Weight 100 as in mdistiller."""

from __future__ import annotations

import torch
from torch import nn

from kdistill.distill.features import FeatureMethod
from kdistill.distill.losses import hint_loss, resize_map
from kdistill.distill.registry import register


@register("fitnet")
class FitNet(FeatureMethod):
    name = "fitnet"
    defaults = {"weight": 100.0, "ce_weight": 1.0, "student_layers": None, "teacher_layers": None}
    search = {"weight": (1.0, 1000.0, True)}

    def choose_layers(self, student, teacher_model, example):
        student_paths, teacher_paths = super().choose_layers(student, teacher_model, example)
        return student_paths[:1], teacher_paths[:1]  # one hint layer

    def build(self, student_out: dict, teacher_out: dict) -> None:
        (student_map,), (teacher_map,) = student_out.values(), teacher_out.values()
        self.regressor = nn.Conv2d(student_map.shape[1], teacher_map.shape[1], kernel_size=1)

    def feature_loss(self, student_outs: list[torch.Tensor], teacher_outs: list[torch.Tensor]) -> torch.Tensor:
        student_map, teacher_map = student_outs[0], teacher_outs[0]
        # Resizing first is exact (a 1x1 convolution commutes with averaging and bilinear
        # interpolation) and cheaper when the student's map is the larger one.
        resized = resize_map(student_map.float(), tuple(teacher_map.shape[-2:]))
        regressed = self.regressor(resized.to(self.regressor.weight.dtype))
        return self.params["weight"] * hint_loss(regressed, teacher_map.to(regressed.dtype))
