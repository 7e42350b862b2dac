"""The one base of every method, the baseline's cross-entropy included.

A method is an ``nn.Module``, so one that owns trainable parameters (a regressor, a projector)
hands them to the training loop with ``parameters()`` and ``state_dict()``; they are trained with
the student and kept in the resume state, never in the student's checkpoint.

The base owns the hard-label term (:meth:`DistillMethod.cross_entropy`): over the labelled rows
only, with a mixed view's two labels weighted by its lambda. A method's class declares the rest
(read by kdistill/distill/registry.py, which answers for the whole program):

- ``needs``: what it reads of the teacher: ``{"logits"}``, ``{"features"}`` (hooks on a live
  teacher), ``{"features", "embedding"}`` (the pooled embedding, storable per view) or empty;
- ``shared``: which of ``distill.alpha`` / ``distill.temperature`` it takes;
- ``defaults``, ``positive``, ``search``: its own hyper-parameters, which must be above 0, and the
  ranges ``kdistill tune`` searches;
- ``takes_unlabeled`` / ``takes_mixed``: whether its terms stay right on rows without a label
  (label -1) and on mixed views (mixup, cutmix), where only the base's cross-entropy reads labels;
- ``two_class_note``: one line saying why it degenerates with two classes, or None.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdistill.distill.losses import labelled_cross_entropy
from kdistill.distill.registry import check_numbers


class DistillMethod(nn.Module):
    """Defaults of the method contract: a logit method with its own hyper-parameters, none shared,
    on labelled, unmixed rows only."""

    needs: frozenset = frozenset({"logits"})
    shared: tuple[str, ...] = ()
    defaults: dict[str, Any] = {}
    positive: tuple[str, ...] = ("temperature",)  # hyper-parameters that must be above 0
    search: dict[str, tuple[float, float, bool]] = {}
    takes_unlabeled: bool = False
    takes_mixed: bool = False
    two_class_note: str | None = None

    def __init__(self, class_weights: torch.Tensor | None = None, **params: Any):
        super().__init__()
        self.class_weights = class_weights  # a plain attribute: not state, not moved by .to()
        self.params = {**self.defaults, **params}
        missing = [name for name in self.shared if name not in self.params]
        if missing:  # the run passes distill.alpha / distill.temperature (method_arguments)
            raise TypeError(f"{type(self).__name__} needs {', '.join(missing)}")
        self.epoch = 1

    @classmethod
    def check(cls, params: dict[str, Any], key: str) -> None:
        check_numbers(params, key, cls.positive)

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop before each epoch (1-based), for warm-ups."""
        self.epoch = epoch

    def record(self) -> dict[str, Any]:
        """What the checkpoint's ``training`` entry records: the shared values, and its own ones."""
        own = {name: value for name, value in self.params.items() if name not in self.shared}
        return {**{name: self.params[name] for name in self.shared}, **({"params": own} if own else {})}

    def cross_entropy(self, logits: torch.Tensor, batch) -> torch.Tensor:
        """The hard-label term over ``batch``'s labelled rows (mixed targets on mixed views); with
        every row labelled and unmixed, exactly ``F.cross_entropy(logits, batch.labels, weight)``."""
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return labelled_cross_entropy(logits, batch.labels, batch.labeled, weight=weight,
                                      mix_lambda=batch.mix_lambda, partner_labels=batch.partner_labels)
