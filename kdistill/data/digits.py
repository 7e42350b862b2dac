"""The embedded ``digits`` dataset: scikit-learn's bundled 8x8 handwritten digits, upscaled, so
the demo runs with no download."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits


DIGIT_CLASSES = tuple(str(d) for d in range(10))


def digits_images(size: int) -> tuple[torch.Tensor, list[int], list[str]]:
    """Return ``([1797, 1, size, size] uint8, labels, class names)``."""
    digits = load_digits()
    pixels = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N,1,8,8]
    upscaled = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    images = (upscaled.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, digits.target.tolist(), list(DIGIT_CLASSES)
