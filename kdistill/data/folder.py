"""Scan an image folder laid out as ``ROOT/<split>/<class>/<image>`` and check its structure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdistill.errors import DataError
from kdistill.log import log

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class FolderSplit:
    """The files of one split: parallel lists of paths and class indices."""

    paths: list[Path]
    labels: list[int]


def scan_dataset_root(root: Path) -> tuple[list[str], dict[str, FolderSplit]]:
    """Return the class names and the splits found under ``root`` (``train/`` is required)."""
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{root}: no train/ folder (expected {root}/train/<class>/<images>)")
    classes = class_names(train_dir)
    splits = {"train": scan_split(train_dir, classes)}
    for name in ("val", "test"):
        split_dir = root / name
        if split_dir.is_dir():
            other = class_names(split_dir)
            if other != classes:
                raise DataError(
                    f"{split_dir}: classes {other} differ from train/ classes {classes}"
                )
            splits[name] = scan_split(split_dir, classes)
    return classes, splits


def class_names(split_dir: Path) -> list[str]:
    """Sub-folder names of a split, sorted; hidden folders are ignored."""
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise DataError(f"{split_dir}: found {len(names)} class folder(s), need at least 2")
    return names


def scan_split(split_dir: Path, classes: list[str]) -> FolderSplit:
    """List the image files per class; other files are logged and skipped."""
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        class_dir = split_dir / name
        files = class_folder_files(class_dir)
        # Hidden files (.DS_Store, macOS "._IM-0001.jpeg" resource forks) are never images.
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
        for skipped in sorted(set(files) - set(images)):
            log.info(f"skipping {skipped}: not an image file")
        if not images:
            raise DataError(f"{class_dir}: class folder has no images")
        paths.extend(images)
        labels.extend([index] * len(images))
    return FolderSplit(paths, labels)


def class_folder_files(class_dir: Path) -> list[Path]:
    """The files of a class folder, sorted, broken links included (see below); the data loader and
    the doctor list the same files."""
    return sorted(p for p in class_dir.iterdir() if p.is_file() or is_broken_link(p))


def is_broken_link(path: Path) -> bool:
    """A symbolic link that loops or points nowhere. It is kept in the listing (when its name is an
    image's) so that decoding reports it under ``on_bad_image`` instead of it vanishing silently.
    Sub-folders, including linked ones, are never entered, so a link to a parent cannot loop the scan."""
    return path.is_symlink() and not path.exists()


def sample_train_files(root: Path, count: int, seed: int = 0) -> tuple[list[str], list[Path], list[int]]:
    """``count`` files of ``root/train`` drawn at random with ``seed``, kept in folder order: the
    fixed subsets the benchmarks time (the same images in every run and every script)."""
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"{root}: no train/ folder (expected {root}/train/<class>/<images>)")
    classes = class_names(train)
    found = scan_split(train, classes)
    chosen = sorted(np.random.default_rng(seed).permutation(len(found.paths))[:count].tolist())
    return classes, [found.paths[i] for i in chosen], [found.labels[i] for i in chosen]
