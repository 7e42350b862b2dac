"""kdistill's family of small students, sized by a handful of knobs, for budgets from about 10k to
about 1M parameters.

Two registered names, each built from the same knobs (stored as ``model_args`` in model.json, so a
checkpoint rebuilds itself):

``kd_mobile``  MobileNetV2-style inverted residual blocks: 1x1 expansion, 3x3 depthwise, optional
               squeeze-excitation, 1x1 linear projection; a stride-1 block adds its input back.
``kd_plain``   the same layout with two plain 3x3 convolutions per stage (no depthwise, no
               expansion), a residual-free baseline of the same shape.

Knobs: ``width`` (channels after the stem; each stage doubles them), ``depth`` (stages; each halves
the resolution, so it is one stride-2 block then one stride-1 block), ``stem_stride`` (1, 2 or 4:
the stem's 3x3 convolution stride, which divides every later cost by its square), ``expansion``
(kd_mobile only: hidden channels = expansion x input channels) and ``se`` (squeeze-excitation in
every block). Global average pooling before the classifier makes the parameter count independent
of the input size. Every layer is a plain ``nn.Module`` (Conv2d, BatchNorm2d, ReLU, Linear), so
forward hooks reach any of them and ONNX export and int8 quantization see standard operators.
"""

from __future__ import annotations

import torch
from torch import nn

STEM_STRIDES = (1, 2, 4)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SqueezeExcitation(nn.Module):
    """Channel gates from the globally pooled features: ``x * sigmoid(fc2(relu(fc1(mean(x)))))``."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(4, channels // reduction)  # at least 4: tiny widths keep a usable bottleneck
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 (stride) -> [SE] -> project (1x1, no ReLU: a linear
    bottleneck); the input is added back when the shape is unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, se: bool):
        super().__init__()
        hidden = cin * expansion
        layers = [_conv_bn_relu(cin, hidden, kernel=1)] if expansion != 1 else []
        layers.append(_conv_bn_relu(hidden, hidden, stride=stride, groups=hidden))
        if se:
            layers.append(SqueezeExcitation(hidden))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class PlainBlock(nn.Module):
    """One 3x3 convolution (stride), BatchNorm, ReLU, then optional SE: no shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, se: bool):
        super().__init__()
        layers = [_conv_bn_relu(cin, cout, stride=stride)]
        if se:
            layers.append(SqueezeExcitation(cout))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class FamilyStudent(nn.Module):
    """stem -> ``depth`` stages (stride-2 block, stride-1 block; channels doubled) -> global
    average pool -> linear classifier. ``block`` is ``"mobile"`` or ``"plain"``."""

    def __init__(self, num_classes: int, *, block: str = "mobile", width: int = 8, depth: int = 3,
                 stem_stride: int = 2, expansion: int = 4, se: bool = False, in_channels: int = 3,
                 input_size: int | None = None):
        super().__init__()
        del input_size  # global pooling makes the network independent of it
        _check_knobs(block, width, depth, stem_stride, expansion)
        self.stem = _conv_bn_relu(in_channels, width, stride=stem_stride)
        stages, cin = [], width
        for index in range(depth):
            cout = width * 2 ** (index + 1)
            stages.append(nn.Sequential(_block(block, cin, cout, 2, expansion, se),
                                        _block(block, cout, cout, 1, expansion, se)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _block(kind: str, cin: int, cout: int, stride: int, expansion: int, se: bool) -> nn.Module:
    if kind == "mobile":
        return InvertedResidual(cin, cout, stride, expansion, se)
    return PlainBlock(cin, cout, stride, se)


def _check_knobs(block: str, width: int, depth: int, stem_stride: int, expansion: int) -> None:
    """A wrong knob is a TypeError, which the pipeline reports as a bad ``student.model_args``."""
    if block not in ("mobile", "plain"):
        raise TypeError(f"block {block!r} is not 'mobile' or 'plain'")
    for name, value in (("width", width), ("depth", depth), ("expansion", expansion)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if stem_stride not in STEM_STRIDES:
        raise TypeError(f"stem_stride must be one of {STEM_STRIDES}, got {stem_stride!r}")


def kd_mobile(num_classes: int, **kwargs) -> nn.Module:
    return FamilyStudent(num_classes, block="mobile", **kwargs)


def kd_plain(num_classes: int, *, expansion: int = 1, **kwargs) -> nn.Module:
    del expansion  # plain blocks do not expand; accepted so one grid of knobs fits both names
    return FamilyStudent(num_classes, block="plain", **kwargs)


FAMILY = {"kd_mobile": kd_mobile, "kd_plain": kd_plain}
