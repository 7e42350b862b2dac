"""The reference student and the choice between its CPU fast path and its own modules.

``ReferenceStudent`` is the one-block CNN of the popular chest X-ray recipe:
Conv2d(3, 4, 3, padding=1) -> BatchNorm -> ReLU -> MaxPool(2) -> Linear(4 * 112 * 112, classes)
at 224x224: 100,474 parameters and 5.52 M MACs for 2 classes. Almost all of its parameters sit in
the final Linear layer, which is why its speed is set by memory traffic rather than arithmetic.

It implements the fast-path protocol of kdistill/models/fast_path.py. In CPU float32 training the
layers after the convolution run as one fused step (fused.py) and, when the loop offers raw pixel
blocks (pixel_blocks.py), the convolution runs on them too (block_conv.py). Both compute what the
modules compute, up to float rounding, but bypass the BatchNorm, ReLU and pooling modules (and,
on blocks, the convolution module). So the modules run as written whenever ``fast_path`` is False
or a hook is registered on ``features`` or one of its layers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from kdistill.errors import ConfigError
from kdistill.models.fast_path import has_hooks
from kdistill.models.reference.block_conv import block_conv
from kdistill.models.reference.fused import (bn_relu_maxpool2, bn_relu_maxpool2_blocks, can_fuse,
                                             fusable, fusable_batchnorm)
from kdistill.models.reference.pixel_blocks import BlockImages, can_use_blocks, to_blocks


class ReferenceStudent(nn.Module):
    """Conv -> BatchNorm -> ReLU -> MaxPool(2) -> Linear, with a CPU training fast path (module
    docstring). ``fast_path`` is a plain attribute: not a parameter, buffer or checkpoint entry."""

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
        self.fast_path = True

    def forward(self, x: torch.Tensor | BlockImages) -> torch.Tensor:
        if isinstance(x, BlockImages):  # CPU training batches offered by training_input
            if self._fast_path_on() and fusable(x.pixels, self.features[1], self.training):
                return self._forward_blocks(x)
            x = x.to_images()
        if not self._fast_path_on():
            return self.classifier(torch.flatten(self.features(x), 1))  # standard PyTorch, hooks fire
        conv, batchnorm, relu, pool = self.features
        z = conv(x)  # training batches arrive channels-last, which suits this convolution
        if can_fuse(z, batchnorm, self.training):
            # CPU training: the same three layers reordered to run on pooled values (fused.py).
            x = bn_relu_maxpool2(z, batchnorm)
        else:
            # BatchNorm, ReLU and pooling over 4 channels run faster in the default layout than
            # channels-last.
            x = pool(relu(batchnorm(z.contiguous())))  # [B, width, S/2, S/2]
        return self.classifier(torch.flatten(x, 1))  # [B, classes]

    def training_input(self, images: torch.Tensor, *, channels: int, mean, std, device: torch.device,
                       precision: str) -> Callable[[torch.Tensor], BlockImages] | None:
        """uint8 batches -> :class:`BlockImages` when the block path will run on them (fast path on,
        no hooks, BatchNorm training with batch statistics, CPU float32, block-shaped ``images``);
        otherwise None: ordinary normalized batches (kdistill/models/fast_path.py)."""
        if not (self._fast_path_on() and fusable_batchnorm(self.features[1], self.features[1].training)
                and device.type == "cpu" and precision == "fp32" and can_use_blocks(images, channels)):
            return None
        return functools.partial(to_blocks, channels=channels, mean=mean, std=std)

    def _fast_path_on(self) -> bool:
        """Fast path allowed, and no hook on a module it bypasses (a hook must never miss a call)."""
        return self.fast_path and not has_hooks(self.features, *self.features)

    def _forward_blocks(self, x: BlockImages) -> torch.Tensor:
        conv, batchnorm, _, _ = self.features
        z = block_conv(x, conv)  # [B, 4 * width, S/2, S/2], one channel group per pooling position
        return self.classifier(torch.flatten(bn_relu_maxpool2_blocks(z, batchnorm), 1))
