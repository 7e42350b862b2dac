"""kdistill's own small students.

``reference_student`` is the one-block CNN of the popular chest X-ray recipe:
Conv2d(3, 4, 3, padding=1) -> BatchNorm -> ReLU -> MaxPool(2) -> Linear(4 * 112 * 112, classes)
at 224x224: 100,474 parameters and 5.52 M MACs for 2 classes. Almost all of its parameters sit in
the final Linear layer, which is why its speed is set by memory traffic rather than arithmetic.

``tiny_cnn_d2`` .. ``tiny_cnn_d4`` are deeper tiny CNNs (conv blocks with doubling width, then
global average pooling), whose size does not grow with the input size.
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.models.reference.pixel_blocks import BlockImages
from kdistill.errors import ConfigError
from kdistill.models.reference.block_conv import block_conv
from kdistill.models.reference.fused import bn_relu_maxpool2, bn_relu_maxpool2_blocks, can_fuse, fusable


class ReferenceStudent(nn.Module):
    takes_block_images = True  # CPU training batches may arrive as BlockImages (see forward)

    def __init__(self, num_classes: int, width: int = 4, input_size: int = 224, in_channels: int = 3):
        super().__init__()
        if input_size % 2:
            raise ConfigError(f"data.input_size: reference_student needs an even input size, got {input_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(width * (input_size // 2) ** 2, num_classes)

    def forward(self, x: torch.Tensor | BlockImages) -> torch.Tensor:
        conv, batchnorm, relu, pool = self.features
        if isinstance(x, BlockImages):  # CPU training batches (kdistill/models/reference/block_conv.py)
            return self._forward_blocks(x)
        z = conv(x)  # training batches arrive channels-last, which suits this convolution
        if can_fuse(z, batchnorm, self.training):
            # CPU training: the same three layers reordered to run on pooled values (~2x faster).
            x = bn_relu_maxpool2(z, batchnorm)
        else:
            # BatchNorm, ReLU and pooling over 4 channels run ~3x faster in the default layout.
            x = pool(relu(batchnorm(z.contiguous())))  # [B, width, S/2, S/2]
        return self.classifier(torch.flatten(x, 1))  # [B, classes]

    def _forward_blocks(self, x: BlockImages) -> torch.Tensor:
        conv, batchnorm, _, _ = self.features
        if not fusable(x.pixels, batchnorm, self.training):
            return self.forward(x.to_images())
        z = block_conv(x, conv)  # [B, 4 * width, S/2, S/2], one channel group per pooling position
        return self.classifier(torch.flatten(bn_relu_maxpool2_blocks(z, batchnorm), 1))


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
}
