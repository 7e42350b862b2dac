"""``partial`` fine-tuning: the last stages of a network train, everything before them stays frozen.

Stages are found by structure, not by model name: torchvision ResNets' ``layer1`` .. ``layer4``,
timm EfficientNets' ``blocks.0`` .. ``blocks.N``, else the top-level children that hold parameters,
up to the classifier head. Parameters are registered in forward order in these models, so every
parameter from the first trainable stage on trains: the chosen stages and what follows them (a
final 1x1 convolution and its BatchNorm, the head). Frozen BatchNorm layers keep their running
statistics: the training loop puts them in eval mode (``set_train_mode``).
"""

from __future__ import annotations

import re

from torch import nn

from kdistill.errors import ConfigError
from kdistill.models.registry import find_head


def stage_paths(model: nn.Module) -> list[str]:
    """Module paths of the model's stages, input side first."""
    children = dict(model.named_children())
    resnet = sorted((name for name in children if re.fullmatch(r"layer\d+", name)), key=lambda n: int(n[5:]))
    if resnet:
        return resnet
    blocks = children.get("blocks")
    if isinstance(blocks, nn.Sequential) and len(blocks) > 1:
        return [f"blocks.{name}" for name, _ in blocks.named_children()]
    head_path = find_head(model)[0]
    head_top = head_path.split(".")[0]
    stages = []
    for name, child in children.items():
        if name == head_top:
            break
        if any(True for _ in child.parameters()):
            stages.append(name)
    return stages


def partial_trainable(model: nn.Module, blocks: int = 1, prefixes: list[str] | tuple = ()) -> list[str]:
    """Names of the parameters that train in ``partial`` mode: with ``prefixes``, those under these
    module paths (and the head); else every parameter from the last ``blocks`` stages on."""
    names = [name for name, _ in model.named_parameters()]
    head_path = find_head(model)[0]
    if prefixes:
        for prefix in prefixes:
            if not any(_under(name, prefix) for name in names):
                raise ConfigError(f"teacher.trainable_prefixes: {prefix!r} names no module with parameters "
                                  f"in {type(model).__name__} (stages: {', '.join(stage_paths(model))})")
        return [n for n in names if any(_under(n, p) for p in (*prefixes, head_path))]
    stages = stage_paths(model)
    if not 1 <= blocks <= len(stages):
        raise ConfigError(f"teacher.trainable_blocks: {blocks} must be between 1 and the "
                          f"{len(stages)} stages of {type(model).__name__} ({', '.join(stages)})")
    first = stages[-blocks]
    start = next(i for i, name in enumerate(names) if _under(name, first))
    return names[start:]


def freeze_all_but(model: nn.Module, trainable: list[str]) -> None:
    """Freeze every parameter except the named ones."""
    keep = set(trainable)
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
