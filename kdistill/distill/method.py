"""The base of kdistill's own distillation methods: an ``nn.Module``, so a method that owns
trainable parameters (a regressor, a projector) hands them to the training loop with
``parameters()`` and ``state_dict()``; they are trained with the student and kept in the resume
state, never in the student's checkpoint."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.distill.registry import check_numbers


class DistillMethod(nn.Module):
    """Defaults for the method contract (kdistill/distill/registry.py): a logit method with its own
    hyper-parameters, none shared with ``distill.alpha`` / ``distill.temperature``."""

    needs: frozenset = frozenset({"logits"})
    shared: tuple[str, ...] = ()
    defaults: dict[str, Any] = {}
    positive: tuple[str, ...] = ("temperature",)  # hyper-parameters that must be above 0
    search: dict[str, tuple[float, float, bool]] = {}
    two_class_note: str | None = None

    def __init__(self, class_weights: torch.Tensor | None = None, **params: Any):
        super().__init__()
        self.class_weights = class_weights  # a plain attribute: not state, not moved by .to()
        self.params = {**self.defaults, **params}
        self.epoch = 1

    @classmethod
    def check(cls, params: dict[str, Any], key: str) -> None:
        check_numbers(params, key, cls.positive)

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop before each epoch (1-based), for warm-ups."""
        self.epoch = epoch

    def record(self) -> dict[str, Any]:
        """What the checkpoint's ``training`` entry records of this method."""
        return {"params": dict(self.params)}

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, weight=self.class_weights)
