"""Patient-grouped, class-stratified splits: one patient's images never land on both sides."""

from __future__ import annotations

import re
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
