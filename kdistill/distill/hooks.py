"""Intermediate outputs of unmodified models, reached by forward hooks on module paths
(``model.get_submodule(path)``), so torchvision and timm models need no rewriting.

A path names a module's output; ``PATH:input`` names its input (the classifier head's input is the
penultimate embedding). Default layers are found by running the model once on a small input: the
last module output at each of the two smallest spatial sizes among the model's stages (ResNet:
``layer3``, ``layer4``; torchvision EfficientNet: ``features.N``; timm EfficientNet: ``blocks.N``;
the reference student: ``features.2``, ``features.3``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from kdistill.errors import ConfigError
from kdistill.models import find_head

INPUT_SUFFIX = ":input"
# Children of these containers are candidate stages; other direct children are stages themselves.
STAGE_CONTAINERS = ("features", "blocks", "stages", "layers")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (hook paths name the model's own modules)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def resolve(model: nn.Module, path: str, key: str = "distill.params") -> nn.Module:
    name = path.removesuffix(INPUT_SUFFIX)
    try:
        return unwrap(model).get_submodule(name)
    except AttributeError:
        raise ConfigError(f"{key}: {type(unwrap(model)).__name__} has no module {name!r}") from None


@contextlib.contextmanager
def capture(model: nn.Module, paths: Sequence[str], key: str = "distill.params") -> Iterator[dict]:
    """Inside the block, every forward of ``model`` stores each path's output (or input, for
    ``PATH:input``) in the yielded dict; the hooks are removed on leaving it."""
    found: dict[str, torch.Tensor] = {}
    handles = []
    for path in paths:
        module = resolve(model, path, key)
        if path.endswith(INPUT_SUFFIX):
            handles.append(module.register_forward_pre_hook(_store_input(found, path)))
        else:
            handles.append(module.register_forward_hook(_store_output(found, path)))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def _store_output(found: dict, path: str):
    def hook(module, args, output):
        found[path] = output

    return hook


def _store_input(found: dict, path: str):
    def hook(module, args):
        found[path] = args[0]

    return hook


def probe(model: nn.Module, paths: Sequence[str], example: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs at ``paths`` for one forward of ``example`` in eval mode, without gradients."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture(model, paths) as found:
            model(example)
    finally:
        model.train(was_training)
    return dict(found)


def stage_candidates(model: nn.Module) -> list[str]:
    """Module paths that may end a stage: the children of a stage container, else the direct children."""
    paths = []
    for name, child in unwrap(model).named_children():
        if name in STAGE_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            paths += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            paths.append(name)
    return paths


def default_layers(model: nn.Module, example: torch.Tensor, count: int = 2) -> list[str]:
    """The last stage output at each of the ``count`` smallest spatial sizes above 1x1, shallow to deep."""
    outputs = probe(model, stage_candidates(model), example)
    order = [p for p in stage_candidates(model) if p in outputs]  # forward order of named children
    last_at_size: dict[int, str] = {}
    for path in order:
        value = outputs[path]
        if isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[-1] * value.shape[-2] > 1:
            last_at_size[value.shape[-1] * value.shape[-2]] = path
    if not last_at_size:
        raise ConfigError(f"{type(unwrap(model)).__name__}: no spatial feature maps found; name the layers "
                          f"in distill.params.<method>.student_layers / teacher_layers")
    smallest = sorted(last_at_size)[:count]
    return [last_at_size[size] for size in sorted(smallest, reverse=True)]


def embedding_path(model: nn.Module) -> str:
    """The penultimate embedding: the classifier head's input."""
    return find_head(unwrap(model))[0] + INPUT_SUFFIX
