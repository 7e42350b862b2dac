"""Name -> distillation method, and what the rest of kdistill asks of a method by its name.

A method is a small class, ``method(batch, student, teacher)`` returning ``{"loss": ..., <named
terms>}``; the training loop reads only ``"loss"`` (and ``"logits"`` for training accuracy). What
a class may declare (all optional, so a plain class with ``__call__`` is a method too):

- ``needs``: ``{"logits"}`` (the teacher's logits), ``{"features"}`` (intermediate outputs reached by
  forward hooks, which needs the live teacher), ``{"features", "embedding"}`` (by default only the
  pooled embedding, which can be stored per view like the logits) or empty (no teacher);
- ``shared``: which of ``distill.alpha`` / ``distill.temperature`` it takes (a class without the
  attribute takes both);
- ``defaults``: its own hyper-parameters, set as ``distill.params.<method>.<name>``, checked by
  ``check(params)`` (a :class:`ConfigError` naming the key);
- ``search``: ``{name: (low, high, log)}``, the ranges ``kdistill tune`` searches;
- ``two_class_note``: one line saying why it degenerates with two classes.

Config validation, ``kdistill tune`` and the report ask these through the functions below; no other
module keeps a list of method names.
"""

from __future__ import annotations

import math
from typing import Any

from kdistill.errors import ConfigError

METHODS: dict[str, type] = {}
SHARED_KEYS = {"alpha": "distill.alpha", "temperature": "distill.temperature"}


def register(name: str):
    def decorate(cls: type) -> type:
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
    cls = METHODS[name]
    if hasattr(cls, "needs"):
        return frozenset(cls.needs)
    return frozenset({"logits"}) if getattr(cls, "needs_teacher", True) else frozenset()


def shared_keys(name: str) -> tuple[str, ...]:
    """Which of ``alpha`` / ``temperature`` the method takes from ``distill.alpha`` / ``distill.temperature``."""
    return tuple(getattr(METHODS[name], "shared", tuple(SHARED_KEYS)))


def method_defaults(name: str) -> dict[str, Any]:
    return dict(getattr(METHODS[name], "defaults", {}))


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
    check = getattr(cls, "check", None)
    if check is not None:
        check(merged, key)
    return merged


def search_space(name: str) -> dict[str, tuple[float, float, bool]]:
    return dict(getattr(METHODS[name], "search", {}))


def two_class_note(name: str, num_classes: int) -> str | None:
    """Why ``name`` degenerates at ``num_classes`` (two), or None."""
    return getattr(METHODS[name], "two_class_note", None) if num_classes == 2 else None


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
