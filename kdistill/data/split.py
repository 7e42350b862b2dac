"""Patient-grouped, class-stratified splits: one patient's images, and byte-identical copies of
them under any name, never land on both sides."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from kdistill.errors import ConfigError, DataError


def patient_keys(paths: Sequence[Path], pattern: str) -> list[str]:
    """The patient key of each file: the regex's first group (or whole match) on the file name.

    A name the regex does not match is its own group, so it can never link two splits wrongly.
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"data.patient_regex: {pattern!r} is not a valid regex ({exc})") from None
    keys = []
    for path in paths:
        match = regex.search(path.name)
        if match is None:
            keys.append(f"file:{path.name}")
        else:
            keys.append(match.group(1) if match.groups() else match.group(0))
    return keys


def merge_identical_files(paths: Sequence[Path], keys: Sequence[str]) -> list[str]:
    """The keys again, with the keys of byte-identical files merged into one (the smallest).

    A copy of an image filed under another patient's name would otherwise be free to land on the
    other side of a split, where it would be scored as unseen. Only files whose size some other
    file shares are read, so a folder without duplicates costs one ``stat`` per file.
    """
    parent = {key: key for key in keys}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for same_bytes in _identical_file_groups(paths):
        first, *rest = sorted({root(keys[i]) for i in same_bytes})
        for other in rest:
            parent[other] = first  # ``first`` is the smallest root, so the merged key is stable
    return [root(key) for key in keys]


def _identical_file_groups(paths: Sequence[Path]) -> list[list[int]]:
    """Indices of files with identical bytes, in groups of two or more."""
    by_size: dict[int, list[int]] = defaultdict(list)
    for index, path in enumerate(paths):
        try:
            by_size[path.stat().st_size].append(index)
        except OSError:  # unreadable: the loader reports and skips it
            continue
    groups = []
    for indices in (same for same in by_size.values() if len(same) > 1):
        by_digest: dict[bytes, list[int]] = defaultdict(list)
        for index in indices:
            try:
                by_digest[hashlib.sha256(paths[index].read_bytes()).digest()].append(index)
            except OSError:
                continue
        groups += [same for same in by_digest.values() if len(same) > 1]
    return groups


def grouped_holdout(
    labels: Sequence[int], groups: Sequence[str], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, holdout) with about ``fraction`` held out, grouped and stratified.

    Uses scikit-learn's StratifiedGroupKFold with ``round(1 / fraction)`` folds and holds out the
    first fold, so class proportions are kept as far as the groups allow.
    """
    n_splits = max(2, round(1.0 / fraction))
    n_groups = len(set(groups))
    if n_groups < n_splits:
        raise DataError(
            f"only {n_groups} patient groups: too few to hold out {fraction:.0%} grouped by patient"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    indices = np.arange(len(labels))
    keep, holdout = next(folds.split(indices, np.asarray(labels), np.asarray(groups)))
    return np.sort(keep), np.sort(holdout)


def shared_groups(*group_lists: Sequence[str]) -> set[str]:
    """Patient keys present in more than one of the given splits (should be empty)."""
    seen: dict[str, int] = {}
    for split_index, groups in enumerate(group_lists):
        for key in set(groups):
            seen[key] = seen.get(key, 0) + 1
    return {key for key, count in seen.items() if count > 1}


def matching_holdout(
    paths: Sequence[Path], labels: Sequence[int], classes: Sequence[str], pattern: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, holdout): the files whose name ``pattern`` matches are held out.

    A held-out source (one hospital's or scanner's naming scheme) shows what transfers, where a
    random carve scores every model alike. Files go by name alone: a patient key with files on
    both sides stays split, and the leak check (``shared_groups``) counts it.
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"data.test_match: '{pattern}' is not a valid regex ({exc})") from None
    held = np.array([regex.search(path.name) is not None for path in paths], dtype=bool)
    label_array = np.asarray(labels)
    for index, name in enumerate(classes):
        _check_class_held_out(pattern, name, held[label_array == index])
    return np.flatnonzero(~held), np.flatnonzero(held)


def _check_class_held_out(pattern: str, class_name: str, held: np.ndarray) -> None:
    """One class's files must be on both sides: some in the test split, some left to train on."""
    if not held.any():
        raise ConfigError(f"data.test_match: '{pattern}' matches no train/ file of class "
                          f"'{class_name}'; the held-out test split needs every class")
    if held.all():
        raise ConfigError(f"data.test_match: '{pattern}' matches every train/ file of class "
                          f"'{class_name}' ({held.size}); none would be left to train on")


class ForbiddenTestSplit:
    """Stands in for the test split while a command chooses something (``kdistill tune``,
    ``search-student``): touching it is a bug, so it raises. Not a KdistillError, so a search
    does not record it as one failed trial and carry on."""

    def __init__(self, command: str):
        self.command = command

    def _refuse(self, *args, **kwargs):
        raise RuntimeError(f"{self.command}: the test split was used; choosing may only see train and val")

    __getattr__ = __len__ = __iter__ = __getitem__ = _refuse
