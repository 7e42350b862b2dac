"""Run a model over a split and return its logits (eval mode, no_grad, fixed order);
``kdistill.calibration.scaled_probs`` turns them into probabilities at a checkpoint's temperature."""

from __future__ import annotations

import torch
from torch import nn

from kdistill.data import ImageSplit, iterate_batches


def predict_logits(model: nn.Module, split: ImageSplit, *, channels: int, mean, std,
                   batch_size: int = 128) -> torch.Tensor:
    """Logits ``[N, K]`` in the split's order; no shuffling, no augmentation."""
    was_training = model.training
    model.eval()
    outputs = []
    with torch.no_grad():
        for batch in iterate_batches(split, batch_size, channels=channels, mean=mean, std=std):
            outputs.append(model(batch.images).float())
    model.train(was_training)
    return torch.cat(outputs)
