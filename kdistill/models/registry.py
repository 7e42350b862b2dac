"""``build_model(name, num_classes, ...)``: one factory over kdistill's students, torchvision's
classification models and (optionally) timm's, with the classifier head sized for the dataset."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdistill.errors import ConfigError, KdistillError
from kdistill.models.students import STUDENTS

TIMM_PREFIX = "timm:"


def available_models() -> list[str]:
    """kdistill's students and torchvision's classification models (timm models: ``timm:NAME``)."""
    import torchvision

    return sorted(STUDENTS) + sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(
    name: str,
    num_classes: int,
    *,
    input_size: int = 224,
    in_channels: int = 3,
    pretrained: bool = False,
    weights: str | None = None,
    **model_args,
) -> nn.Module:
    """Build ``name`` with a ``num_classes`` head; load ImageNet or local weights if asked."""
    if name in STUDENTS:
        if pretrained or weights:
            raise ConfigError(f"{name}: kdistill students have no pretrained weights")
        return STUDENTS[name](num_classes, input_size=input_size, in_channels=in_channels, **model_args)
    if in_channels != 3:
        raise ConfigError(f"{name}: pretrained-architecture models take 3 channels (data.channels: 3)")
    if name.startswith(TIMM_PREFIX):
        model = _build_timm(name[len(TIMM_PREFIX):], num_classes, pretrained, **model_args)
    else:
        model = _build_torchvision(name, num_classes, pretrained and not weights, **model_args)
    if weights:
        load_local_weights(model, Path(weights))
    return model


def _build_torchvision(name: str, num_classes: int, pretrained: bool, **model_args) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"model {name!r}: not a kdistill student or torchvision classification "
                          f"model (students: {', '.join(STUDENTS)}; timm models: timm:NAME)")
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **model_args)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; hash mismatches are RuntimeErrors
        raise KdistillError(
            f"{name}: could not load ImageNet weights ({type(exc).__name__}: {exc}); pass a local "
            f"file with teacher.weights=PATH, or train from scratch with teacher.pretrained=false"
        ) from None
    replace_head(model, num_classes)
    return model


def _build_timm(name: str, num_classes: int, pretrained: bool, **model_args) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"timm:{name}: timm is not installed (pip install 'kdistill[timm]')") from None
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **model_args)
    except (OSError, RuntimeError) as exc:
        raise KdistillError(
            f"timm:{name}: could not load pretrained weights ({exc}); pass teacher.weights=PATH "
            f"or train from scratch with teacher.pretrained=false"
        ) from None


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier head: timm's ``get_classifier()``, else the last Linear layer."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        for path, module in model.named_modules():
            if module is head:
                return path, module
    linears = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__}: no Linear classifier head found")
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last Linear layer for a fresh one with ``num_classes`` outputs."""
    path, head = find_head(model)
    if head.out_features == num_classes:
        return
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    setattr(parent, path.rpartition(".")[2], nn.Linear(head.in_features, num_classes))


def load_local_weights(model: nn.Module, path: Path) -> None:
    """Load a local weights file without unpickling arbitrary objects.

    ``.safetensors`` files hold tensors only; ``.pth``/``.pt`` files are read with
    ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
    A classifier head whose shape differs (ImageNet's 1000 classes) is left freshly initialized.
    """
    if not path.is_file():
        raise ConfigError(f"teacher.weights: {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure means the file is not usable weights
        raise ConfigError(f"teacher.weights: {path} is not a readable weights file ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    head_path, _ = find_head(model)
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in usable and not k.startswith(head_path + ".")]
    if missing:
        raise ConfigError(f"teacher.weights: {path} does not fit this model (missing or mismatched: "
                          f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
    model.load_state_dict(usable, strict=False)
