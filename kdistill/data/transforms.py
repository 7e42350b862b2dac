"""The reference transforms, applied to whole uint8 batches: random horizontal flip (training
only) and ImageNet normalization. Resizing happened once, at decode time."""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalization(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for 3 channels; their average for a single grayscale channel."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)


def random_flips(batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One coin per image: True means the image is mirrored left-right."""
    return torch.rand(batch_size, generator=generator) < 0.5


def apply_flips(images: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose ``flipped`` entry is True; ``images`` is a CPU ``[B, C, H, W]``.

    Only the mirrored images are copied, through NumPy's reversed-stride copy: ``torch.where`` over
    ``images.flip(-1)`` would copy the whole batch twice (the flip, then the selection)."""
    if not bool(flipped.any()):
        return images
    out = images.clone()
    array, chosen = out.numpy(), flipped.nonzero().flatten().numpy()
    array[chosen] = array[chosen, ..., ::-1]  # the right side is a copy (fancy indexing): no overlap
    return out


def to_model_input(
    images: torch.Tensor, channels: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 ``[B, 1|3, H, W]`` -> normalized float32 ``[B, channels, H, W]``.

    ``(x / 255 - mean) / std`` as one multiply and one add per value: a grayscale batch is
    expanded to three channels by the multiply's broadcasting, not copied first.
    """
    x = images.float()
    if x.shape[1] != channels and x.shape[1] != 1:
        x = x.mean(1, keepdim=True)  # colour images for a grayscale model
    scale, shift = normalization_affine(mean, std)
    return (x * scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1))


def normalization_affine(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x / 255 - mean) / std`` as ``x * scale + shift``, the constants rounded once from float64."""
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = 1.0 / (255.0 * std_t)
    shift = -torch.tensor(mean, dtype=torch.float64) / std_t
    return scale.float(), shift.float()
