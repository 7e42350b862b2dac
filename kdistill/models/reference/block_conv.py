"""The reference student's first convolution computed on 2x2 pixel blocks, for CPU training.

A 3x3 convolution with 4 output channels is a poor fit for CPU convolution kernels, which
vectorize over output channels, and a grayscale X-ray expanded to 3 normalized channels is read as
three times the data it holds. Both costs go away with an exact rewrite:

* The batch stays raw pixel values in 2x2 blocks (:class:`kdistill.models.reference.pixel_blocks.BlockImages`).
  Normalization ``x * scale + shift`` is linear, so its ``scale`` is folded into the weights and
  its ``shift`` into the bias; a grayscale image expanded to three channels sums the three
  channels' weights.
* On blocks the 3x3 convolution becomes a 3x3 convolution over the block grid with 4x the output
  channels, one group per position in the block (taps that fall outside the original 3x3 window
  are zero). In the default (NCHW) layout each group is a run of whole channel planes, so the
  following 2x2 max pooling is an elementwise maximum of four long contiguous runs
  (:func:`kdistill.models.reference.fused.bn_relu_maxpool2_blocks`), and the pooled result is already laid
  out as the classifier reads it.
* The convolution's weight gradient runs on channels-last copies of its input and output
  gradient: CPU kernels vectorize it better there than in NCHW, copies included
  (:class:`_BlockConvolution`).
* Zero padding of the original model pads the *normalized* image; padding raw pixels with zero
  misses the shift's contribution on the one-pixel border ring, so that ring gets it added back
  (:class:`_AddBorder`).

Gradients reach the original ``conv.weight`` and ``conv.bias`` through these differentiable
rewrites, so the optimizer, checkpoints and every other path see the ordinary model. The tests
compare the result and every gradient against the ordinary layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.models.reference.pixel_blocks import CENTER, BlockImages
from kdistill.data.transforms import normalization_affine


# _TAP[d, e, a, k] = 1 where a 3x3 kernel's tap k (offset k-1) reaches, from an output pixel at
# position d of its block, the input pixel at position e of the block a-1 blocks away: 2(a-1)+e-d = k-1.
_TAP = torch.tensor([[[[float(2 * (a - 1) + e - d == k - 1) for k in range(3)] for a in range(3)]
                      for e in range(2)] for d in range(2)])


def block_conv(x: BlockImages, conv: nn.Conv2d) -> torch.Tensor:
    """``conv`` applied to the normalized images ``x`` stands for, on the block grid:
    ``[N, 4*O, H/2, W/2]`` (NCHW), channels ordered (row in block, column in block, output)."""
    weight = conv.weight  # [O, C, 3, 3]
    scale, shift = normalization_affine(x.mean, x.std)
    shift = shift + scale * CENTER  # the pixels are raw values minus CENTER
    on_raw = weight * scale.view(1, -1, 1, 1)
    if x.source_channels != x.channels:  # grayscale expanded to every input channel
        on_raw = on_raw.sum(1, keepdim=True)
    o, s = weight.shape[0], on_raw.shape[1]
    block_weight = torch.einsum("deak,fgbl,oskl->dfosegab", _TAP, _TAP, on_raw).reshape(4 * o, 4 * s, 3, 3)
    # The shift of an interior pixel's 3x3 neighbourhood is a per-channel constant: a bias.
    shift_taps = weight * shift.view(1, -1, 1, 1)
    bias = shift_taps.sum((1, 2, 3))
    if conv.bias is not None:
        bias = bias + conv.bias
    z = _BlockConvolution.apply(x.pixels, block_weight, bias.repeat(4))
    h, w = x.pixels.shape[-2:]
    return _AddBorder.apply(z, _border_correction(shift_taps, 2 * h, 2 * w))


def _border_correction(shift_taps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """What the border ring misses of the interior constant, in block layout ``[1, 4*O, H/2, W/2]``.

    A 3x3 image of the shift has one pixel of each kind (corner, edge, interior); the full map
    repeats its middle row and column. Zero everywhere but on the ring."""
    o = shift_taps.shape[0]
    small = F.conv2d(torch.ones(1, shift_taps.shape[1], 3, 3), shift_taps, padding=1)  # [1, O, 3, 3]
    small = small - small[:, :, 1:2, 1:2]
    rows = torch.cat([small[:, :, :1], small[:, :, 1:2].expand(-1, -1, height - 2, -1), small[:, :, 2:]], 2)
    full = torch.cat([rows[..., :1], rows[..., 1:2].expand(-1, -1, -1, width - 2), rows[..., 2:]], 3)
    blocks = full.view(1, o, height // 2, 2, width // 2, 2).permute(0, 3, 5, 1, 2, 4)
    return blocks.reshape(1, 4 * o, height // 2, width // 2)


# The first and last block rows, then the first and last block columns without the corners.
_BORDER_STRIPS = [(slice(None), slice(None), 0), (slice(None), slice(None), -1),
                  (slice(None), slice(None), slice(1, -1), 0), (slice(None), slice(None), slice(1, -1), -1)]


class _BlockConvolution(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=1)`` in NCHW, with the weight and bias gradients computed
    on channels-last copies (no input gradient: the input is data)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    def backward(ctx, grad_z):
        x, weight = ctx.saved_tensors
        cl = torch.channels_last
        _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_z.contiguous(memory_format=cl), x.contiguous(memory_format=cl), weight, [weight.shape[0]],
            [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, True])
        return None, grad_weight, grad_bias


class _AddBorder(torch.autograd.Function):
    """``z + border`` where ``border`` is zero but on the outer block rows and columns: adds only
    there, in place, so neither pass touches the whole tensor (autograd's own in-place slicing
    would copy the full gradient once per slice)."""

    @staticmethod
    def forward(ctx, z, border):
        for strip in _BORDER_STRIPS:
            z[strip] += border[strip]
        ctx.mark_dirty(z)
        return z

    @staticmethod
    def backward(ctx, grad_z):
        grad_border = torch.zeros((1,) + grad_z.shape[1:], dtype=grad_z.dtype)
        for strip in _BORDER_STRIPS:
            grad_border[strip] = grad_z[strip].sum(0, keepdim=True)
        return grad_z, grad_border
