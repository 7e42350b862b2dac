"""Feeding a model normalized for one channel count with batches made for another.

A grayscale student sees 1-channel batches normalized with the averaged ImageNet mean/std, while a
3-channel teacher expects the same gray value repeated in three channels, each normalized with its
own ImageNet mean/std. Both are affine in the raw pixel value, so the conversion is one exact
per-channel affine: ``x_out[c] = x_in * (std_in / std_out[c]) + (mean_in - mean_out[c]) / std_out[c]``.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAdapter(nn.Module):
    """Runs ``model`` (normalized with ``mean_out``/``std_out`` over ``len(mean_out)`` channels) on
    1-channel input normalized with ``mean_in``/``std_in``: the input is mapped back to pixel scale
    and renormalized per output channel, in one multiply-add (float64 constants, rounded once)."""

    def __init__(self, model: nn.Module, *, mean_in, std_in, mean_out, std_out):
        super().__init__()
        if len(mean_in) != 1 or len(std_in) != 1:
            raise ValueError(f"ChannelAdapter takes 1-channel input, got mean {list(mean_in)}")
        self.model = model
        mean_in_t = torch.tensor(mean_in, dtype=torch.float64)
        std_in_t = torch.tensor(std_in, dtype=torch.float64)
        mean_out_t = torch.tensor(mean_out, dtype=torch.float64)
        std_out_t = torch.tensor(std_out, dtype=torch.float64)
        # Buffers, not parameters: nothing here trains, and .to(device) moves them with the model.
        self.register_buffer("scale", (std_in_t / std_out_t).float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean_in_t - mean_out_t) / std_out_t).float().view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 1:
            raise ValueError(f"ChannelAdapter: expected 1-channel input, got {x.shape[1]} channels")
        return self.model(x * self.scale + self.shift)  # [B, 1, H, W] -> [B, C_out, H, W] by broadcasting
