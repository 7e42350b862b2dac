"""Teacher outputs for a batch: from a live frozen teacher, or replayed from a table computed once.

Training augmentation is a horizontal flip only, so every image has exactly two views (plain and
mirrored). ``CachedTeacher`` runs the frozen teacher once on both views of every training image and
then returns, for each batch, the logits of the very view the student sees; the outputs are the
same as the live teacher's (it is in eval mode, so its output depends on the view alone).
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.data import Batch, ImageSplit, iterate_batches


def freeze(model: nn.Module) -> nn.Module:
    """Freeze every parameter and put the model in eval mode (BatchNorm uses running stats)."""
    model.requires_grad_(False)
    return model.eval()


class LiveTeacher:
    """Runs the frozen teacher on each batch, under ``no_grad``."""

    def __init__(self, model: nn.Module):
        self.model = freeze(model)

    def __call__(self, batch: Batch) -> torch.Tensor:
        self.model.eval()  # guards against a caller switching it back to train mode
        with torch.no_grad():
            return self.model(batch.images)


class CachedTeacher:
    """Teacher logits for every (training image, flip) pair, computed once: ``[N, 2, K]``."""

    def __init__(self, model: nn.Module, split: ImageSplit, *, channels: int, mean, std,
                 batch_size: int = 64):
        model = freeze(model)
        count = len(split)
        table = None
        for flip in (False, True):
            for batch in iterate_batches(split, batch_size, channels=channels, mean=mean, std=std):
                images = batch.images.flip(-1) if flip else batch.images
                with torch.no_grad():
                    logits = model(images).float()
                if table is None:
                    table = torch.empty(count, 2, logits.shape[1])
                table[batch.index, int(flip)] = logits
        self.table = table

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.table[batch.index, batch.flipped.long()]
