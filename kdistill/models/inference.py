"""How a trained model runs its inference passes: a faster runner registered for a frozen model
(an ONNX Runtime session, kdistill/deploy/runner.py), else its deploy form
(kdistill/models/reference/deploy_form.py), which for most models is the model itself.

The registry holds one runner per model object and forgets it with the model. Only frozen models
are registered (the pipeline's teacher): a runner holds a copy of the weights, so a model that
still trains must never have one.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

from kdistill.models.reference.deploy_form import deploy_form

_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def use_runner(model: nn.Module, runner: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """From now on, inference passes of ``model`` (frozen) go through ``runner``."""
    if any(p.requires_grad for p in model.parameters()) or model.training:
        raise ValueError("only a frozen model in eval mode may run through another runtime")
    _RUNNERS[model] = runner


def inference_function(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """What computes ``model``'s outputs for an inference pass on the CPU."""
    runner = _RUNNERS.get(model)
    return runner if runner is not None else deploy_form(model)


def registered_runner(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The runner registered for ``model``, or None (callers that need its exact PyTorch outputs
    then run the model itself)."""
    return _RUNNERS.get(model)
