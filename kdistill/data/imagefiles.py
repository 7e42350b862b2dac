"""Images given as files or folders (not a dataset layout): find them recursively and decode them
exactly as training does (``read_image`` -> ``to_storage_tensor`` -> ``to_model_input``), keeping
the reason for every file that cannot be read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdistill.data import ImageSplit, load_eval_folder
from kdistill.data.datasets import eval_class_folder
from kdistill.data.decode import decode_files, to_storage_tensor
from kdistill.data.folder import IMAGE_SUFFIXES
from kdistill.errors import DataError


def find_images(inputs: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named directly, plus image files under folders (recursive, hidden files skipped).
    Returns the files and ``(path, reason)`` for inputs that do not exist."""
    files, missing = [], []
    for path in inputs:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if _is_image_name(p, path)))
        elif path.is_file():
            files.append(path)
        else:
            missing.append((str(path), "not found"))
    return files, missing


def _is_image_name(path: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not hidden


def decode_images(paths: list[Path], input_size: int, channels: int
                  ) -> tuple[torch.Tensor, list[Path], list[tuple[str, str]]]:
    """uint8 ``[N, 1|3, S, S]`` for the readable files, those files, and ``(path, reason)`` for the rest."""
    arrays, kept_index, failed = decode_files(paths, input_size, "skip")
    kept = [paths[i] for i in kept_index]
    bad = [(str(path), reason) for path, reason in failed]
    if not kept:
        return torch.zeros(0, channels, input_size, input_size, dtype=torch.uint8), kept, bad
    return to_storage_tensor(arrays, channels), kept, bad


def is_labelled(folder: Path, classes: list[str]) -> bool:
    """True when ``folder`` (or its ``test/``) has one sub-folder per checkpoint class."""
    base = eval_class_folder(folder, classes)
    return all((base / name).is_dir() for name in classes)


def load_images(folder: Path, meta: dict, limit: int | None = None) -> tuple[ImageSplit, bool]:
    """Images of ``folder`` for calibration or checks, and whether they carry labels.

    A folder laid out ``<class>/`` (as ``kdistill evaluate`` takes) gives labels; any other folder
    is read recursively without labels (label -1). ``limit`` keeps an evenly spaced subset."""
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    if is_labelled(folder, meta["classes"]):
        split, _ = load_eval_folder(folder, meta["classes"], meta["input_size"], meta["channels"])
        return evenly_spaced(split, limit), True
    files, _ = find_images([folder])
    if limit is not None and len(files) > limit:
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]
    images, kept, _ = decode_images(files, meta["input_size"], meta["channels"])
    if not kept:
        raise DataError(f"{folder}: no readable images")
    names = [str(p) for p in kept]
    return ImageSplit(images, torch.full((len(kept),), -1), names, names), False


def evenly_spaced(split: ImageSplit, limit: int | None) -> ImageSplit:
    """Evenly spaced images across the split (it is sorted by class, so every class stays in)."""
    if limit is None or len(split) <= limit:
        return split
    index = torch.linspace(0, len(split) - 1, limit).round().long()
    return ImageSplit(split.images[index], split.labels[index], [split.names[i] for i in index],
                      [split.groups[i] for i in index])
