"""A config's distillation methods as runs: which distilled students a seed trains (and their
folders), each method's constructor arguments, what model.json records of it, and the method
columns of its results row."""

from __future__ import annotations

import dataclasses

from kdistill.config import Config
from kdistill.distill.registry import method_defaults, shared_keys, two_class_note


def distilled_runs(config: Config) -> list[tuple[str, str]]:
    """``(method, folder)`` of each distilled student of a seed: ``distilled/`` for ``distill.method``
    alone, ``distilled-<method>/`` for every method of a ``distill.methods`` comparison."""
    if config.distill.methods is None:
        return [(config.distill.method, "distilled")]
    return [(method, f"distilled-{method}") for method in config.distill.methods]


def with_method(config: Config, method: str) -> Config:
    return dataclasses.replace(config, distill=dataclasses.replace(config.distill, method=method))


def method_arguments(config: Config) -> dict:
    """The distilled method's constructor arguments: ``distill.alpha`` / ``distill.temperature``
    where it shares them (kd, article), then its own ``distill.params.<method>``."""
    dcfg = config.distill
    shared = {key: getattr(dcfg, key) for key in shared_keys(dcfg.method)}
    return {**shared, **(dcfg.params.get(dcfg.method) or method_defaults(dcfg.method))}


def method_record(method) -> dict:
    """What model.json records of the method (its ``record()``: the values it trained with)."""
    return method.record()


def method_columns(row: dict, method: str, num_classes: int, compared: bool) -> dict:
    """A student row's ``method``, its training cost (mean seconds per epoch, from the history), the
    two-class degeneracy note where it applies, and in a comparison the ``group`` its mean ± std
    and paired tests are reported under."""
    seconds = [entry["seconds"] for entry in row.get("history") or [] if "seconds" in entry]
    columns = {"method": method, "seconds_per_epoch": round(sum(seconds) / len(seconds), 3) if seconds else None}
    note = two_class_note(method, num_classes)
    if note:
        columns["degenerate"] = note
    if compared:
        columns["group"] = f"distilled-{method}"
    return columns
