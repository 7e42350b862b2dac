"""Run a model over a split and return logits or class probabilities (eval mode, no_grad, fixed
order). Probabilities take a temperature: a checkpoint's is its model.json ``temperature``."""

from __future__ import annotations

import numpy as np
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


def predict_probs(model: nn.Module, split: ImageSplit, *, channels: int, mean, std,
                  batch_size: int = 128, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` ``[N, K]`` in the split's order."""
    logits = predict_logits(model, split, channels=channels, mean=mean, std=std, batch_size=batch_size)
    return torch.softmax(logits / temperature, dim=1).numpy()

