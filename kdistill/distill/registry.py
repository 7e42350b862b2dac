"""Name -> distillation method. A method is a small class: ``method(batch, student, teacher)``
returns ``{"loss": ..., <named terms>}``; the training loop reads only ``"loss"``."""

from __future__ import annotations

METHODS: dict[str, type] = {}


def register(name: str):
    def decorate(cls: type) -> type:
        METHODS[name] = cls
        return cls

    return decorate


def build_method(name: str, **kwargs):
    if name not in METHODS:
        raise KeyError(f"unknown distillation method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name](**kwargs)
