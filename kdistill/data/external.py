"""Labelled folders from outside the run's own data: external test sets (``data.external``),
reported beside the test split and never selected on, and a deployment site's labelled sample
(``calibration.site``), on which thresholds and temperatures are refitted.

Each is laid out as ``FOLDER/<class>/<images>`` (or a dataset root whose ``test/`` holds the
classes), with the run's classes. Before anything is decoded the folder and its classes are
checked; then every file is hashed, and a byte-identical copy of one of the run's own images
(train, validation or test) is left out and listed: a model scored on an image it trained on, or
a threshold fitted on a test image, would overstate what it does elsewhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from kdistill.data.datasets import ImageSplit, decode_labelled_files, eval_class_folder
from kdistill.data.folder import class_names, scan_split
from kdistill.errors import DataError
from kdistill.log import log


@dataclass
class LabelledFolder:
    """A decoded labelled folder and what its checks found."""

    name: str
    folder: str
    split: ImageSplit
    skipped_files: list[str] = field(default_factory=list)  # unreadable images
    copies: list[dict] = field(default_factory=list)  # {"path", "split", "same_as"}: left out

    def summary(self, classes: list[str]) -> dict:
        """The folder as results.json describes it."""
        return {"name": self.name, "root": self.folder, "images": len(self.split),
                "class_counts": self.split.class_counts(len(classes)),
                "skipped_files": self.skipped_files, "copies_of_run_images": self.copies}


def class_folder(folder: Path, classes: list[str], key: str) -> Path:
    """The folder holding the class sub-folders, checked to hold exactly the run's classes."""
    if not folder.is_dir():
        raise DataError(f"{key}: {folder}: folder not found")
    inner = eval_class_folder(folder, classes)
    found = class_names(inner)
    if found != classes:
        raise DataError(f"{key}: {inner}: classes {found} differ from the run's classes {classes}")
    return inner


def folder_names(folders: list[str]) -> list[str]:
    """A short unique name per folder (its base name, numbered when two share one)."""
    bases = [Path(f).resolve().name or "external" for f in folders]
    return [base if bases.count(base) == 1 else f"{base}-{index + 1}" for index, base in enumerate(bases)]


def load_labelled_folder(folder: str, name: str, classes: list[str], *, input_size: int, channels: int,
                         on_bad_image: str, run_files: dict[str, list[str]], key: str) -> LabelledFolder:
    """Decode a labelled folder, leaving out byte-identical copies of the run's images
    (``run_files``: split name -> file paths)."""
    inner = class_folder(Path(folder), classes, key)
    found = scan_split(inner, classes)
    copies = copies_of(found.paths, run_files)
    copied = {item["path"] for item in copies}
    for item in copies:
        log.info(f"{key}: {item['path']} is byte-identical to {item['split']} image {item['same_as']}; left out")
    kept = [i for i, path in enumerate(found.paths) if str(path) not in copied]
    if not kept:
        raise DataError(f"{key}: {inner} holds only copies of the run's own images")
    split, skipped = decode_labelled_files([found.paths[i] for i in kept], [found.labels[i] for i in kept],
                                           input_size, channels, on_bad_image, str(inner))
    missing = [classes[c] for c, n in enumerate(split.class_counts(len(classes))) if n == 0]
    if missing:
        raise DataError(f"{key}: {inner} has no readable images of {', '.join(missing)}")
    return LabelledFolder(name, str(folder), split, skipped, copies)


def copies_of(paths: list[Path], run_files: dict[str, list[str]]) -> list[dict]:
    """The files among ``paths`` whose bytes equal one of ``run_files``' (split name -> paths)."""
    by_hash: dict[str, tuple[str, str]] = {}
    for split, files in run_files.items():
        for path in files:
            digest = _sha256(Path(path))
            if digest is not None:
                by_hash.setdefault(digest, (split, str(path)))
    found = []
    for path in paths:
        match = by_hash.get(_sha256(path) or "")
        if match:
            found.append({"path": str(path), "split": match[0], "same_as": match[1]})
    return found


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None  # an unreadable file is the loader's to report


