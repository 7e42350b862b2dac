"""Training batches as raw pixel values in 2x2 blocks, for models that take them.

``BlockImages`` holds a batch as float32 raw pixel values minus 128 (-128..127; one channel when
the source is grayscale) arranged as ``F.pixel_unshuffle`` arranges them: ``[N, 4*S, H/2, W/2]``,
channels ordered (source channel, row in block, column in block), plus the normalization the
model expects. It carries a third of the bytes of the normalized 3-channel batch for a grayscale
source, and costs one conversion pass. The reference student computes on it directly
(kdistill/models/reference/block_conv.py); ``to_images`` gives the ordinary normalized batch for anything
else.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from kdistill.data.transforms import normalization_affine

CENTER = 128.0  # subtracted from every raw pixel value (see BlockImages)


@dataclasses.dataclass
class BlockImages:
    """A training batch as raw pixel values in 2x2 blocks, plus what normalizes it.

    ``pixels`` is float32 ``[N, 4*S, H/2, W/2]`` (NCHW), raw values minus :data:`CENTER` (so
    -128..127: centred values keep the convolution's weight gradient, a sum over every pixel of
    the batch, from cancelling large terms); ``channels`` is the model's input channel count (3 for
    a grayscale source expanded to RGB)."""

    pixels: torch.Tensor
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def source_channels(self) -> int:
        return self.pixels.shape[1] // 4

    def to_images(self) -> torch.Tensor:
        """The ordinary normalized ``[N, channels, H, W]`` batch these blocks stand for."""
        raw = F.pixel_shuffle(self.pixels, 2) + CENTER  # [N, S, H, W]
        scale, shift = normalization_affine(self.mean, self.std)
        return raw * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def can_use_blocks(images: torch.Tensor, channels: int) -> bool:
    """Whether uint8 ``images`` ``[N, S, H, W]`` can be fed as blocks to a ``channels``-input model:
    even sizes of at least 4 (so the border ring and the interior are distinct blocks), and a source
    with the model's channels or a grayscale one."""
    _, s, h, w = images.shape
    return (images.dtype == torch.uint8 and h % 2 == 0 and w % 2 == 0 and h >= 4 and w >= 4
            and s in (1, channels))


def to_blocks(images: torch.Tensor, channels: int, mean, std) -> BlockImages:
    """uint8 ``[N, S, H, W]`` -> :class:`BlockImages`: ``F.pixel_unshuffle``'s arrangement, as one
    copy whose inner loop runs along image rows (faster than ``pixel_unshuffle`` itself, whose
    inner loop strides across them)."""
    n, s, h, w = images.shape
    centered = torch.bitwise_xor(images, 128).view(torch.int8)  # flipping the top bit: x - 128, exactly
    arranged = centered.view(n, s, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)  # [N, S, 2, 2, h, w]
    pixels = torch.empty(arranged.shape, dtype=torch.float32)
    pixels.copy_(arranged)
    return BlockImages(pixels.view(n, 4 * s, h // 2, w // 2), channels, tuple(mean), tuple(std))
