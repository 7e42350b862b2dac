"""BatchNorm (batch statistics) + ReLU + 2x2 max pooling as one autograd step, for CPU training.

The three layers after the reference student's convolution touch every full-resolution value
several times in the forward and backward passes; on a CPU they cost more than the convolution
itself. They can be reordered without changing the result:

* with batch statistics, BatchNorm is a per-channel affine map ``y = z * scale + shift``, which is
  increasing where ``scale >= 0`` and decreasing where ``scale < 0``;
* max pooling commutes with an increasing map (and turns into min pooling under a decreasing one,
  handled by pooling ``z * sign(scale)``);
* ReLU is non-decreasing, so it commutes with max pooling too.

So ``maxpool(relu(bn(z))) == relu(pool(z) * scale + shift)``. Only the batch statistics still need
a pass over the full-resolution tensor; the affine map and ReLU run on a quarter of the values. The
backward pass uses the closed form of BatchNorm's gradient, whose two batch sums can be taken over
the pooled values alone (no other position receives gradient from the pooling), so the
full-resolution gradient is one affine map of ``z`` plus the pooled gradient added at each window's
winner.

Layout: ``z`` is channels-last, viewed as rows of ``W * C`` values (``[N*H, W*C]``). Every
per-channel constant is repeated along such a row, so each elementwise operation runs over long
contiguous rows; broadcasting a ``[C]`` vector over a 4-wide channel dimension gives an inner
loop of 4 values, which does not vectorize.
The window's two rows are pooled first (contiguous rows), then its two columns.

The result equals the three separate layers up to float rounding (the tests compare them). When
values in a window tie, the gradient goes to one of them: the first row, then the first column.
"""

from __future__ import annotations

import torch
from torch import nn


def can_fuse(z: torch.Tensor, batchnorm: nn.Module, training: bool) -> bool:
    """Whether :func:`bn_relu_maxpool2` may stand in for the three layers on ``z``: see
    :func:`fusable`, and even height and width."""
    return fusable(z, batchnorm, training) and z.dim() == 4 and z.shape[-1] % 2 == 0 and z.shape[-2] % 2 == 0


def fusable(z: torch.Tensor, batchnorm: nn.Module, training: bool) -> bool:
    """Only plain BatchNorm in training mode (:func:`fusable_batchnorm`) on CPU float32: on a GPU
    the vendor kernels are fast already, and reduced precision keeps PyTorch's own handling."""
    return fusable_batchnorm(batchnorm, training) and z.device.type == "cpu" and z.dtype == torch.float32


def fusable_batchnorm(batchnorm: nn.Module, training: bool) -> bool:
    """Plain affine BatchNorm with running statistics, in training mode: SyncBatchNorm must gather
    statistics across processes, and in eval mode BatchNorm is an affine map PyTorch runs as is."""
    return (training and type(batchnorm) is nn.BatchNorm2d and batchnorm.affine
            and batchnorm.track_running_stats)


def bn_relu_maxpool2(z: torch.Tensor, batchnorm: nn.BatchNorm2d) -> torch.Tensor:
    """``MaxPool2d(2)(ReLU(batchnorm(z)))`` in training mode, updating the running statistics.

    Returns ``[N, C, H/2, W/2]`` in the default (contiguous) layout. The backward pass overwrites
    ``z`` with its gradient (it is an intermediate nobody reads afterwards; this saves a 25 MB
    allocation per step at 224 px).
    """
    z = z.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        mean, var = _batch_mean_var(z)
        _update_running_stats(batchnorm, mean, var, count=z.numel() // z.shape[1])
    return _BatchNormReluMaxPool.apply(z, batchnorm.weight, batchnorm.bias, mean, var, batchnorm.eps)


def _rows(z: torch.Tensor) -> torch.Tensor:
    """A channels-last ``[N, C, H, W]`` tensor as its memory is laid out: ``[N*H, W*C]`` (a view)."""
    n, c, h, w = z.shape
    return z.permute(0, 2, 3, 1).reshape(n * h, w * c)


def _along_row(per_channel: torch.Tensor, width: int) -> torch.Tensor:
    """A ``[C]`` vector repeated to match one row of ``width`` pixels: ``[width * C]``."""
    return per_channel.repeat(width)


def _batch_mean_var(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of a channels-last ``z``.

    ``torch.var_mean`` over three of four dimensions is slow on CPU; a column sum and the diagonal
    of a C x C Gram matrix over the ``[N*H*W, C]`` view run as matrix kernels instead. Both are
    reduced in float32 and combined in float64, so ``E[z^2] - E[z]^2`` loses little to cancellation.
    """
    pixels = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    count = pixels.shape[0]
    mean = _rows(z).sum(0).view(-1, z.shape[1]).sum(0).double() / count
    mean_square = torch.diagonal(pixels.t() @ pixels).double() / count
    var = (mean_square - mean * mean).clamp_min(0)
    return mean.float(), var.float()


def _update_running_stats(batchnorm: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int):
    """What ``nn.BatchNorm2d`` does to its buffers in a training step (unbiased running variance)."""
    batchnorm.num_batches_tracked.add_(1)
    momentum = batchnorm.momentum
    if momentum is None:  # cumulative moving average
        momentum = 1.0 / float(batchnorm.num_batches_tracked)
    batchnorm.running_mean.lerp_(mean, momentum)
    batchnorm.running_var.lerp_(var * (count / max(count - 1, 1)), momentum)


def _greater(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a > b`` as float 0/1: in these elementwise steps a bool mask would be converted to float
    at every use."""
    return torch.gt(a, b, out=torch.empty(a.shape, dtype=a.dtype))


# One pixel's channels (float32) seen as one element of this dtype, for pure data movement.
_PIXEL_AS_ONE_ELEMENT = {1: torch.int32, 2: torch.int64, 4: torch.complex128}


def _split_columns(rows: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Even and odd pixels of ``[R, W*C]`` rows as two contiguous ``[R, W/2 * C]`` tensors.

    Elementwise steps on every other pixel run with an inner loop of C (here 4) values, which does
    not vectorize; one copy into contiguous halves costs less than that. The copy moves each
    pixel's C floats as a single element (their bits, reinterpreted, never converted).
    """
    unit = _PIXEL_AS_ONE_ELEMENT.get(channels)
    if unit is None:
        pixels = rows.view(rows.shape[0], -1, 2, channels)
        return pixels[:, :, 0].reshape(rows.shape[0], -1), pixels[:, :, 1].reshape(rows.shape[0], -1)
    pixels = rows.view(unit)  # [R, W]
    return pixels[:, 0::2].contiguous().view(torch.float32), pixels[:, 1::2].contiguous().view(torch.float32)


def _join_columns(even: torch.Tensor, odd: torch.Tensor, channels: int) -> torch.Tensor:
    """The inverse of :func:`_split_columns`: ``[R, W*C]`` rows with ``even``/``odd`` interleaved."""
    unit = _PIXEL_AS_ONE_ELEMENT.get(channels)
    if unit is None:
        r = even.shape[0]
        return torch.stack([even.view(r, -1, channels), odd.view(r, -1, channels)], dim=2).view(r, -1)
    return torch.stack([even.view(unit), odd.view(unit)], dim=2).view(torch.float32).view(even.shape[0], -1)


def _max_pool_with_picks(z_rows: torch.Tensor, n_h: int, width: int, channels: int):
    """2x2 max pooling of ``[N*H, W*C]`` rows: pooled ``[N*H/2, W/2 * C]`` and which row/column won."""
    pairs = z_rows.view(n_h // 2, 2, width * channels)
    top, bottom = pairs[:, 0], pairs[:, 1]
    row_max = torch.maximum(top, bottom)                    # [N*H/2, W*C], contiguous rows
    bottom_won = _greater(bottom, top)                      # ties stay with the top row
    left, right = _split_columns(row_max, channels)
    pooled = torch.maximum(left, right)                     # [N*H/2, W/2 * C]
    right_won = _greater(right, left)                       # ties stay with the left column
    return pooled, bottom_won, right_won


def _add_at_winners(grad_rows, grad_pooled, bottom_won, right_won, width: int, channels: int):
    """Add each window's gradient to ``grad_rows`` (``[N*H, W*C]``) at the window's winner."""
    half = grad_pooled.shape[0]
    right_part = grad_pooled * right_won
    per_row = _join_columns(grad_pooled - right_part, right_part, channels)  # [N*H/2, W*C]
    pairs = grad_rows.view(half, 2, width * channels)
    pairs[:, 0] += per_row
    pairs[:, 0].addcmul_(per_row, bottom_won, value=-1)
    pairs[:, 1].addcmul_(per_row, bottom_won)


def _refuse_second_backward(ctx, name: str) -> None:
    """The backward pass overwrites the saved input with its gradient, so it can run only once."""
    if getattr(ctx, "input_overwritten", False):
        raise RuntimeError(f"{name}: a second backward pass (retain_graph) is not supported; "
                           "the first one overwrote the saved input")
    ctx.input_overwritten = True


def _batchnorm_gradients(grad_bias, signed_sum, weight, mean, invstd, sign, count: int):
    """BatchNorm's closed-form gradient from its two batch sums, ``sum(g)`` (``grad_bias``) and
    ``sum(g * z * sign)`` (``signed_sum``, g being the gradient at BatchNorm's output): the weight
    gradient ``sum(g * z_hat)`` and the per-channel ``slope`` and ``offset`` of
    ``dL/dz = scale * (g - sum(g)/count - z_hat * sum(g * z_hat)/count)`` without its ``scale * g``
    term, i.e. ``slope * z + offset`` everywhere plus ``scale * g`` where g is nonzero."""
    grad_weight = invstd * (sign * signed_sum - mean * grad_bias)
    scale = weight * invstd
    slope = -scale * invstd * grad_weight / count
    offset = scale * (invstd * mean * grad_weight - grad_bias) / count
    return grad_weight, slope, offset


class _BatchNormReluMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, bias, mean, var, eps):
        n, c, h, w = z.shape
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        sign = torch.where(scale < 0, -1.0, 1.0)
        z_rows = _rows(z)
        signed_rows = z_rows if bool((sign > 0).all()) else z_rows * _along_row(sign, w)
        pooled, bottom_won, right_won = _max_pool_with_picks(signed_rows, n * h, w, c)
        # With z * sign pooled, the BatchNorm output at the winner is pooled * |scale| + shift.
        shift = bias - mean * scale
        out_rows = torch.addcmul(_along_row(shift, w // 2), pooled, _along_row(scale.abs(), w // 2)).relu_()
        ctx.save_for_backward(z, pooled, out_rows, bottom_won, right_won, weight, mean, invstd, sign)
        return out_rows.view(n, h // 2, w // 2, c).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad_out):
        _refuse_second_backward(ctx, "bn_relu_maxpool2")
        z, pooled, out_rows, bottom_won, right_won, weight, mean, invstd, sign = ctx.saved_tensors
        n, c, h, w = z.shape
        count = n * h * w
        grad_rows = grad_out.permute(0, 2, 3, 1).reshape(n * h // 2, w // 2 * c)
        grad_bn = grad_rows * _greater(out_rows, torch.zeros(()))    # through ReLU
        grad_bias = grad_bn.sum(0).view(-1, c).sum(0)                  # sum of g over the batch
        signed_sum = (grad_bn * pooled).sum(0).view(-1, c).sum(0)
        grad_weight, slope, offset = _batchnorm_gradients(grad_bias, signed_sum, weight, mean, invstd,
                                                          sign, count)
        scale = weight * invstd
        # z is not needed after this point (the convolution's backward reads its input, not z), so
        # its memory takes the gradient: a fresh 25 MB tensor per step costs more than the arithmetic.
        grad_z = _rows(z).mul_(_along_row(slope, w)).add_(_along_row(offset, w))
        _add_at_winners(grad_z, grad_bn * _along_row(scale, w // 2), bottom_won, right_won, w, c)
        grad_z = grad_z.view(n, h, w, c).permute(0, 3, 1, 2)           # channels-last [N, C, H, W]
        return grad_z, grad_weight, grad_bias, None, None, None


# --- the same three layers on the block layout of kdistill/models/reference/block_conv.py ---------------
#
# There the convolution's output is ``[N, 4*C, H/2, W/2]`` in the default layout: four groups of C
# channel planes, one group per position in the 2x2 pooling window. Each group is one contiguous
# run of C*H*W/4 values per image, so every step below is an elementwise operation over long runs,
# and the pooled result ``[N, C, H/2, W/2]`` needs no reordering.

def bn_relu_maxpool2_blocks(z: torch.Tensor, batchnorm: nn.BatchNorm2d) -> torch.Tensor:
    """:func:`bn_relu_maxpool2` for a block-layout ``z`` (see above); returns ``[N, C, H/2, W/2]``.
    Ties in a window go to the first position in row-major order, as in PyTorch's pooling."""
    channels = batchnorm.num_features
    z = z.contiguous()
    with torch.no_grad():
        mean, var = _plane_mean_var(z, channels)
        _update_running_stats(batchnorm, mean, var, count=z.numel() // channels)
    return _BlockBatchNormReluMaxPool.apply(z, batchnorm.weight, batchnorm.bias, mean, var, batchnorm.eps)


def _plane_mean_var(z: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of an NCHW ``z`` whose channels are groups of
    ``channels``: sums along each plane (float32), combined per channel in float64."""
    planes = z.view(-1, z.shape[-2] * z.shape[-1])
    count = planes.numel() // channels
    mean = planes.sum(1).view(-1, channels).double().sum(0) / count
    mean_square = torch.linalg.vector_norm(planes, dim=1).double().square().view(-1, channels).sum(0) / count
    var = (mean_square - mean * mean).clamp_min(0)
    return mean.float(), var.float()


def _one_hot_winners(right_won_top, right_won_bottom, bottom_won) -> list[torch.Tensor]:
    """Float 0/1 masks of each window's winning position (top-left, top-right, bottom-left,
    bottom-right) from the three pairwise comparisons: exactly one is 1 per pooled value."""
    top_right = torch.addcmul(right_won_top, right_won_top, bottom_won, value=-1)
    bottom_right = right_won_bottom * bottom_won
    top_left = torch.sub(1.0, bottom_won).sub_(top_right)
    bottom_left = bottom_won - bottom_right
    return [top_left, top_right, bottom_left, bottom_right]


class _BlockBatchNormReluMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, bias, mean, var, eps):
        n, _, h, w = z.shape
        c = weight.shape[0]
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        sign = torch.where(scale < 0, -1.0, 1.0)
        planes = z.view(n, 4, c, h * w).unbind(1)  # [N, C, h*w] views, one per window position
        if not bool((sign > 0).all()):
            planes = [p * sign.view(-1, 1) for p in planes]
        # Row-major first-wins, as PyTorch's pooling: the top pair, the bottom pair, then top
        # against bottom (a tie keeps the earlier position each time).
        top, right_won_top = torch.maximum(planes[0], planes[1]), _greater(planes[1], planes[0])
        bottom, right_won_bottom = torch.maximum(planes[2], planes[3]), _greater(planes[3], planes[2])
        pooled, bottom_won = torch.maximum(top, bottom), _greater(bottom, top)
        winners = _one_hot_winners(right_won_top, right_won_bottom, bottom_won)
        shift = bias - mean * scale
        # mul and add, not addcmul: addcmul with broadcast per-channel operands ran slower here.
        out = (pooled * scale.abs().view(-1, 1)).add_(shift.view(-1, 1)).relu_()
        ctx.save_for_backward(z, pooled, out, *winners, weight, mean, invstd, sign)
        return out.view(n, c, h, w)

    @staticmethod
    def backward(ctx, grad_out):
        _refuse_second_backward(ctx, "bn_relu_maxpool2_blocks")
        z, pooled, out, *winners, weight, mean, invstd, sign = ctx.saved_tensors
        n, _, h, w = z.shape
        c = weight.shape[0]
        count = z.numel() // c
        grad_bn = grad_out.reshape(out.shape) * _greater(out, torch.zeros(()))  # through ReLU
        grad_bias = grad_bn.sum(2).sum(0)
        signed_sum = (grad_bn * pooled).sum(2).sum(0)
        grad_weight, slope, offset = _batchnorm_gradients(grad_bias, signed_sum, weight, mean, invstd,
                                                          sign, count)
        scale = weight * invstd
        at_winner = grad_bn * scale.view(-1, 1)
        # As in bn_relu_maxpool2, z's memory takes the gradient.
        grad_z = z.view(n, 4, c, h * w).mul_(slope.view(-1, 1)).add_(offset.view(-1, 1))
        for position, winner in enumerate(winners):
            grad_z.select(1, position).addcmul_(at_winner, winner)
        return grad_z.view(n, 4 * c, h, w), grad_weight, grad_bias, None, None, None
