"""Name -> distillation method, and what the rest of kdistill asks of a method by its name.

Every method subclasses :class:`~kdistill.distill.method.DistillMethod`, whose docstring lists
what a method declares (what it needs of the teacher, its hyper-parameters and search ranges,
whether it takes unlabelled rows and mixed views, its two-class note). Config validation, the
run's checks, ``kdistill tune`` and the report ask those declarations through the functions
below; no other module keeps a list of method names or names a method.
"""

from __future__ import annotations

import math
from typing import Any

from kdistill.errors import ConfigError

METHODS: dict[str, type] = {}
BASELINE = "ce"  # what the student alone, and the teacher's fine-tuning, train with
DEFAULT_METHOD = "kd"  # distill.method's default


def register(name: str):
    """Class decorator: ``name`` (``distill.method``) builds this :class:`DistillMethod` subclass."""
    from kdistill.distill.method import DistillMethod  # method.py imports this module

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, DistillMethod)):
            raise TypeError(f"method {name!r}: {cls!r} must subclass kdistill.distill.method.DistillMethod")
        METHODS[name] = cls
        return cls

    return decorate


def build_method(name: str, **kwargs):
    if name not in METHODS:
        raise KeyError(f"unknown distillation method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name](**kwargs)


def method_class(name: str, key: str = "distill.method") -> type:
    """The registered class, or a one-line :class:`ConfigError` naming ``key``."""
    if name not in METHODS:
        raise ConfigError(f"{key}: unknown distillation method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def distilling_methods() -> list[str]:
    """The registered methods that learn from a teacher (every one but the baseline's)."""
    return sorted(name for name, cls in METHODS.items() if needs_of(name))


def needs_of(name: str) -> frozenset:
    """What ``name`` reads of the teacher (empty: no teacher)."""
    return frozenset(METHODS[name].needs)


def takes_unlabeled(name: str) -> bool:
    """Whether ``name`` trains on rows without a label (the distillation term alone there)."""
    return METHODS[name].takes_unlabeled


def takes_mixed(name: str) -> bool:
    """Whether ``name`` trains on mixed views (mixup, cutmix; mixed targets in its cross-entropy)."""
    return METHODS[name].takes_mixed


def shared_keys(name: str) -> tuple[str, ...]:
    """Which of ``alpha`` / ``temperature`` the method takes from ``distill.alpha`` / ``distill.temperature``."""
    return tuple(METHODS[name].shared)


def method_defaults(name: str) -> dict[str, Any]:
    return dict(METHODS[name].defaults)


def check_params(name: str, params: Any, key: str | None = None) -> dict[str, Any]:
    """``distill.params.<name>`` checked against the method's declared hyper-parameters; returns
    the defaults updated with ``params``. Unknown names and bad values are ConfigErrors naming the key."""
    key = key or f"distill.params.{name}"
    cls = method_class(name, key)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"{key}: expected a mapping of {name}'s parameters, got {params!r}")
    defaults = method_defaults(name)
    for param in params:
        if param not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"{key}.{param}: unknown parameter of {name} (known: {known})")
    merged = {**defaults, **params}
    cls.check(merged, key)
    return merged


def search_space(name: str) -> dict[str, tuple[float, float, bool]]:
    return dict(METHODS[name].search)


def two_class_note(name: str, num_classes: int) -> str | None:
    """Why ``name`` degenerates at ``num_classes`` (two), or None."""
    return METHODS[name].two_class_note if num_classes == 2 else None


def check_numbers(params: dict[str, Any], key: str, positive: tuple[str, ...] = ()) -> None:
    """Numeric hyper-parameters must be finite and at least 0 (``positive``: above 0); a list value
    (module paths) must hold strings; None means "the default for the model"."""
    for name, value in params.items():
        where = f"{key}.{name}"
        if value is None:
            continue
        if isinstance(value, list):
            if not value or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: expected a non-empty list of module paths, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        if value < 0 or (name in positive and value == 0):
            raise ConfigError(f"{where}: {value} must be {'positive' if name in positive else '0 or more'}")
