"""The optional protocol through which a model offers the training loop a faster CPU form.

A model may define two members. Models without them (torchvision, timm, the tiny CNNs) train on
ordinary normalized batches through their own modules; only the reference student has them
(kdistill/models/reference/student.py).

``fast_path`` (a plain bool attribute, True by default)
    Whether the model may use its fast path at all. False (``student.fast_path: off``) makes it run
    through its own modules in standard PyTorch, so forward hooks on them fire and every result is
    PyTorch's own. Set it with :func:`set_fast_path`; it is not saved in checkpoints.
``training_input(images, *, channels, mean, std, device, precision)``
    Asked by the training loop before each epoch, with the uint8 training split ``[N, S, H, W]``:
    a function turning a uint8 batch ``[B, S, H, W]`` into the model's own training input, or
    None for ordinary normalized batches. The loop asks only when nothing but the model reads the
    batch's images: no teacher that reads them (a teacher says so with ``reads_images``, see
    kdistill/distill/teacher.py) and one process (a distributed wrapper passes tensors only).

A model with a fast path falls back to its own modules by itself whenever a hook is registered on
a module the fast path bypasses (:func:`has_hooks`), so a hook never silently misses a call.
Hooks registered for every module at once (``torch.nn.modules.module.register_module_forward_hook``)
are not seen: use ``fast_path: off`` with them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

FAST_PATH_MODES = ("auto", "off")


def set_fast_path(model: nn.Module, mode: str) -> nn.Module:
    """Apply ``student.fast_path`` (``auto`` or ``off``) to every sub-module that has a fast path;
    returns ``model``."""
    if mode not in FAST_PATH_MODES:
        raise ValueError(f"student.fast_path: {mode!r} is not one of {', '.join(FAST_PATH_MODES)}")
    for module in model.modules():
        if isinstance(getattr(module, "fast_path", None), bool):
            module.fast_path = mode == "auto"
    return model


def model_training_input(model: nn.Module, images: torch.Tensor, *, channels: int, mean, std,
                         device: torch.device, precision: str) -> Callable[[torch.Tensor], object] | None:
    """What ``model.training_input`` answers (see the module docstring); None for a model without it."""
    offer = getattr(model, "training_input", None)
    if offer is None:
        return None
    return offer(images, channels=channels, mean=tuple(mean), std=tuple(std), device=device,
                 precision=precision)


def has_hooks(*modules: nn.Module) -> bool:
    """Whether any of ``modules`` has a forward hook, forward pre-hook or backward hook registered."""
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in modules)
