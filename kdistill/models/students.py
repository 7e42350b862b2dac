"""kdistill's own small students.

``reference_student`` is the one-block CNN of the popular chest X-ray recipe, with its CPU fast
path: it lives in kdistill/models/reference/student.py.

``tiny_cnn_d2`` .. ``tiny_cnn_d4`` are deeper tiny CNNs (conv blocks with doubling width, then
global average pooling), whose size does not grow with the input size.

``kd_mobile`` and ``kd_plain`` are the sized family (width, depth, stem stride, expansion,
squeeze-excitation): kdistill/models/family.py.
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.models.family import FAMILY
from kdistill.models.reference.student import ReferenceStudent


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int, depth: int = 3, width: int = 8, in_channels: int = 3,
                 input_size: int | None = None):
        super().__init__()
        del input_size  # global pooling makes the network independent of it
        widths = [width * 2**i for i in range(depth)]
        blocks = [_conv_block(cin, cout) for cin, cout in zip([in_channels] + widths[:-1], widths)]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def reference_student(num_classes: int, **kwargs) -> nn.Module:
    return ReferenceStudent(num_classes, **kwargs)


def tiny_cnn(depth: int):
    def build(num_classes: int, **kwargs) -> nn.Module:
        return TinyCNN(num_classes, depth=depth, **kwargs)

    return build


STUDENTS = {
    "reference_student": reference_student,
    "tiny_cnn_d2": tiny_cnn(2),
    "tiny_cnn_d3": tiny_cnn(3),
    "tiny_cnn_d4": tiny_cnn(4),
    **FAMILY,
}
