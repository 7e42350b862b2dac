"""The form in which kdistill runs a trained model for inference (ONNX export, bench).

``deploy_form(model)`` returns an eval-mode module that computes the same function as ``model``
in eval mode. For the reference student it is an exact algebraic rewrite that ONNX Runtime runs
faster (the full-resolution activation is never written, see 2 below); every other model comes
back as it is. The reference student is

    Conv2d(C, w, 3, padding=1) -> BatchNorm2d(w) -> ReLU -> MaxPool2d(2) -> flatten -> Linear

and the rewrite is

1. **Fold BatchNorm into the convolution.** In eval mode BatchNorm is the per-channel affine map
   ``z * scale + shift`` with ``scale = gamma / sqrt(running_var + eps)``, so it becomes part of
   the convolution's weights and bias. A negative ``scale`` needs no special case: the folded
   convolution outputs BatchNorm's output itself, before any pooling.
2. **Space-to-depth convolution.** Each 2x2 pooling window reads 4 positions of the convolution's
   output. One Conv2d(C, 4w, kernel 4, stride 2, padding 1) computes all four: output channel
   ``p * w + o`` holds original channel ``o`` at window position ``p`` (row-major
   (0,0), (0,1), (1,0), (1,1)), its 3x3 filter placed at offset ``p`` inside the 4x4 kernel.
   The full-resolution activation is never written.
3. **Max over the four position groups, then ReLU.** That is max pooling; ReLU is
   non-decreasing, so applying it after the max gives the same values on a quarter of them.
   Ties need no care: equal values give the same maximum whichever wins.
4. **Classifier as multiply + sum** in the ONNX export (Mul + ReduceSum; PyTorch keeps its
   matrix product, which needs no ``[B, classes, features]`` intermediate) instead of Gemm: with
   only a few classes and a very long input (4 * 112 * 112), ONNX Runtime ran it faster than
   Gemm/MatMul at batch 1 and about as fast at large batches.

Results differ from the original only by float rounding (~1e-7 on the logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.models.reference.student import ReferenceStudent

# Row-major positions in a 2x2 pooling window, the order of the space-to-depth channel groups.
WINDOW_POSITIONS = ((0, 0), (0, 1), (1, 0), (1, 1))


def deploy_form(model: nn.Module) -> nn.Module:
    """An eval-mode module equal to ``model`` in eval mode, for inference; ``model`` is not modified.

    A :class:`ReferenceStudent` becomes a :class:`DeployedReferenceStudent` (see the module
    docstring); any other model is returned itself, untouched (mode included)."""
    if type(model) is not ReferenceStudent or not _foldable(model.features[1]):
        return model
    return DeployedReferenceStudent(model)


def _foldable(batchnorm: nn.Module) -> bool:
    # Without running statistics eval-mode BatchNorm normalizes with the batch's: nothing to fold.
    return isinstance(batchnorm, nn.BatchNorm2d) and batchnorm.running_var is not None


def fold_batchnorm(conv: nn.Conv2d, batchnorm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one convolution equal to ``batchnorm(conv(x))`` in eval mode (new tensors)."""
    with torch.no_grad():
        scale = torch.rsqrt(batchnorm.running_var + batchnorm.eps)
        if batchnorm.weight is not None:
            scale = scale * batchnorm.weight
        bias = conv.bias if conv.bias is not None else torch.zeros_like(batchnorm.running_mean)
        shift = batchnorm.bias if batchnorm.bias is not None else 0.0
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        return weight, (bias - batchnorm.running_mean) * scale + shift


def space_to_depth_weights(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A stride-2 4x4 convolution's weights computing ``weight``'s 3x3 (padding 1) output at the
    four positions of every 2x2 window: channel ``p * width + o`` is channel ``o`` at position ``p``."""
    width, channels = weight.shape[:2]
    stacked = weight.new_zeros(len(WINDOW_POSITIONS) * width, channels, 4, 4)
    for p, (di, dj) in enumerate(WINDOW_POSITIONS):
        # Output row 2I + di reads input rows 2I + di - 1 .. 2I + di + 1; the 4x4 kernel of the
        # stride-2, padding-1 convolution starts at row 2I - 1, so the filter sits at offset di.
        stacked[p * width:(p + 1) * width, :, di:di + 3, dj:dj + 3] = weight
    return stacked, bias.repeat(len(WINDOW_POSITIONS))


class DeployedReferenceStudent(nn.Module):
    """The reference student rewritten for inference (module docstring); eval mode, no gradients."""

    def __init__(self, student: ReferenceStudent):
        super().__init__()
        conv, batchnorm = student.features[0], student.features[1]
        self.width = conv.out_channels
        weight, bias = space_to_depth_weights(*fold_batchnorm(conv, batchnorm))
        self.conv = nn.Conv2d(conv.in_channels, weight.shape[0], kernel_size=4, stride=2, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)
        # Copies: the deploy form must not share storage with the model it came from.
        self.fc_weight = nn.Parameter(student.classifier.weight.detach().clone())
        self.fc_bias = nn.Parameter(student.classifier.bias.detach().clone())
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # [B, 4 * width, S/2, S/2]: the 4 window positions of each output channel
        w = self.width
        pooled = torch.maximum(torch.maximum(y[:, 0:w], y[:, w:2 * w]),
                               torch.maximum(y[:, 2 * w:3 * w], y[:, 3 * w:4 * w]))
        z = torch.flatten(torch.relu(pooled), 1)  # [B, width * (S/2)^2], the original's order
        if torch.onnx.is_in_onnx_export():
            # Mul + ReduceSum in ONNX: faster than Gemm/MatMul in ONNX Runtime for this shape.
            return (z.unsqueeze(1) * self.fc_weight).sum(-1) + self.fc_bias  # [B, classes]
        # In PyTorch a matrix product, which needs no [B, classes, features] intermediate.
        return F.linear(z, self.fc_weight, self.fc_bias)
