"""Checkpoints as directories: ``model.safetensors`` (weights, no pickle) and ``model.json``
(architecture, classes, preprocessing, decision threshold and temperature fitted on validation,
training config). Loading needs nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kdistill.errors import CheckpointError, KdistillError
from kdistill.fileio import atomic_directory, atomic_file, write_text_atomic
from kdistill.models import build_model

WEIGHTS = "model.safetensors"
META = "model.json"


def save_checkpoint(directory: Path, model: nn.Module, meta: dict) -> None:
    """Write weights and metadata atomically; ``meta["architecture"]`` rebuilds the model."""
    if "architecture" not in meta:
        raise ValueError("checkpoint metadata needs an 'architecture' entry")
    with atomic_directory(directory) as tmp:
        save_file(_tensors(model), str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")


def save_checkpoint_beside(directory: Path, model: nn.Module, meta: dict) -> None:
    """Write a checkpoint into a folder that holds other things too (an ensemble's folder holds its
    members' checkpoints): each file atomically, model.json last, so its presence means complete."""
    if "architecture" not in meta:
        raise ValueError("checkpoint metadata needs an 'architecture' entry")
    with atomic_file(directory / WEIGHTS) as tmp:
        save_file(_tensors(model), str(tmp))
    write_text_atomic(directory / META, json.dumps(meta, indent=2) + "\n")


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def update_meta(directory: Path, updates: dict) -> dict:
    """Merge ``updates`` into an existing checkpoint's ``model.json`` (atomic rewrite; the weights
    are untouched), e.g. the threshold and temperature fitted after training. Returns the new meta."""
    meta = {**read_meta(directory), **updates}
    write_text_atomic(directory / META, json.dumps(meta, indent=2) + "\n")
    return meta


def read_meta(directory: Path) -> dict:
    """A checkpoint's ``model.json``, checked for the fields every reader relies on."""
    path = directory / META
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a kdistill checkpoint (no {META})")
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:  # not JSON, or not UTF-8 text
        raise CheckpointError(f"{path}: unreadable metadata ({str(exc)[:160]})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    for key in ("architecture", "classes", "input_size", "channels", "mean", "std"):
        if key not in meta:
            raise CheckpointError(f"{path}: missing key {key!r}")
    problem = preprocessing_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return meta


def preprocessing_problem(fields: dict) -> str | None:
    """What is wrong with the preprocessing fields of a model.json or an ONNX file's metadata
    (None when nothing): a hand-edited or foreign file must fail here, in one line, not deep inside
    decoding or a model builder."""
    arch = fields.get("architecture")
    if "architecture" in fields and not (isinstance(arch, str) or (
            isinstance(arch, dict) and isinstance(arch.get("name"), str) and isinstance(arch.get("args"), dict))):
        return "architecture must be {name, args}"
    classes, size, channels = fields.get("classes"), fields.get("input_size"), fields.get("channels")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        return f"classes must be a list of at least two names, not {json.dumps(classes)[:60]}"
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 1):
        return f"input_size must be a positive whole number, not {json.dumps(size)[:40]}"
    if channels not in (1, 3) or isinstance(channels, bool):
        return f"channels must be 1 or 3, not {json.dumps(channels)[:40]}"
    for key in ("mean", "std"):
        value = fields.get(key)
        if not (isinstance(value, list) and len(value) == channels
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            return f"{key} must be a list of {channels} numbers, not {json.dumps(value)[:60]}"
    if any(v == 0 for v in fields["std"]):
        return "std must not hold a 0"
    return _decision_problem(fields, classes)


def _decision_problem(fields: dict, classes: list) -> str | None:
    """The optional decision fields: a positive class among the classes, a threshold in [0, 1],
    a positive temperature (absent or null: arg-max, T = 1)."""
    positive, threshold, temperature = (fields.get(key) for key in ("positive_class", "threshold", "temperature"))
    if positive is not None and positive not in classes:
        return f"positive_class {json.dumps(positive)[:40]} is not one of the classes {classes}"
    if threshold is not None and not (_is_number(threshold) and 0 <= threshold <= 1):
        return f"threshold must be a number in [0, 1] (or null), not {json.dumps(threshold)[:40]}"
    if temperature is not None and not (_is_number(temperature) and temperature > 0):
        return f"temperature must be a positive number (or null), not {json.dumps(temperature)[:40]}"
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def load_checkpoint(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model from ``model.json`` and load ``model.safetensors`` into it (eval mode)."""
    directory = Path(directory)
    meta = read_meta(directory)
    arch = meta["architecture"]
    try:
        model = build_model(arch["name"], **arch["args"])
    except (TypeError, KdistillError) as exc:  # a name or an argument this kdistill cannot build
        raise CheckpointError(f"{directory / META}: architecture {arch['name']!r} cannot be built "
                              f"({str(exc).splitlines()[0][:160]})") from None
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS}")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for torn files
        raise CheckpointError(f"{weights}: unreadable weights ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: weights do not match {arch['name']} ({str(exc)[:200]})") from None
    return model.eval(), meta


def architecture(name: str, num_classes: int, input_size: int, in_channels: int, model_args: dict) -> dict:
    """The ``architecture`` entry of ``model.json``: enough to call ``build_model`` again."""
    return {"name": name, "args": {"num_classes": num_classes, "input_size": input_size,
                                   "in_channels": in_channels, **model_args}}


def state_to_tensors(prefix: str, state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a nested state dict into flat tensors (for safetensors) and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value, key):
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(value, dict):
            return {"__dict__": [[k, walk(v, f"{key}.{k}")] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(value)]
        return value

    return tensors, walk(state, prefix)


def tensors_to_state(tensors: dict[str, torch.Tensor], skeleton):
    """Inverse of :func:`state_to_tensors` (dict keys keep their original types, e.g. ints)."""
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: tensors_to_state(tensors, v) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [tensors_to_state(tensors, v) for v in skeleton]
    return skeleton
