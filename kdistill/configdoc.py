"""Generate docs/config.md, the reference of every config key, from the dataclasses in
``kdistill.config`` (types with their allowed words or bounds, defaults, and the meaning each field
carries in ``metadata["help"]``): the same declarations the config's checks read.

``python -m kdistill.configdoc docs/config.md`` rewrites the file; without a path it prints it.
A test fails when the committed file differs from what this produces.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from kdistill.config import Bounds, Config
from kdistill.fileio import atomic_file

REGENERATE = "python -m kdistill.configdoc docs/config.md"

INTRO = f"""\
# Configuration reference

A run reads a YAML file (`configs/` has ready ones) and then `key=value` overrides from the command
line, e.g. `kdistill run config.yaml student.train.lr=3e-4 'seeds=[0,1,2]'`. A nested key is
written with dots in an override and as nested mappings in YAML. An unknown key, a wrong type or a
value outside the allowed set stops the run with one line naming the key. Each run saves its
resolved config, every key included, as `<out>/config.yaml`.

This file is generated from `kdistill/config.py`; after changing a field there, run
`{REGENERATE}`.
"""


def config_markdown() -> str:
    """The whole reference: one table of leaf keys per section, sections in declaration order."""
    parts, described = [INTRO], set()
    for title, cls, rows in _sections(Config(), prefix="", title="Top level"):
        # A class used by two sections (TrainConfig) is described once, where it first appears.
        description = "" if cls in described else _docstring(cls)
        described.add(cls)
        parts.append(_table(title, description, rows))
    return "\n".join(parts)


def _sections(obj: Any, prefix: str, title: str):
    """Yield ``(title, class, rows)`` for ``obj``'s own keys, then for each nested section."""
    rows, nested = [], []
    hints = typing.get_type_hints(type(obj))
    for spec in dataclasses.fields(obj):
        key, value, meaning = prefix + spec.name, getattr(obj, spec.name), spec.metadata["help"]
        if dataclasses.is_dataclass(value):
            nested.append((key, value, meaning))
        else:
            kind = _type_text(hints[spec.name], spec.metadata.get("bounds"))
            rows.append((key, kind, f"`{_yaml_text(value)}`", meaning))
    if rows:
        yield title, type(obj), rows
    for key, value, meaning in nested:
        yield from _sections(value, key + ".", f"`{key}`: {meaning}")


def _table(title: str, description: str, rows: list[tuple[str, str, str, str]]) -> str:
    lines = [f"## {title}", ""]
    if description:
        lines += [description, ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(text) for text in (f"`{key}`", kind, default, meaning)) + " |"
              for key, kind, default, meaning in rows]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a table cell ends at an unescaped pipe, even in code spans


def _docstring(cls: type) -> str:
    """The class docstring as one paragraph (the dataclass's generated signature is not one)."""
    doc = cls.__doc__ or ""
    if doc.startswith(cls.__name__ + "("):
        return ""
    return " ".join(line.strip() for line in doc.strip().splitlines()).replace("``", "`")


def _type_text(hint: Any, bounds: Bounds | None = None) -> str:
    """``Optional[Literal["a", "b"]]`` -> ``one of `a`, `b`, or null``; ``list[int]`` with bounds
    ``at_least(1)`` -> ``list of int, each at least 1``; ``int`` -> ``int, at least 8``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        text = _type_text(inner[0], bounds)
        return f"{text}, or null" if len(inner) < len(args) else text
    if origin is Literal:
        return "one of " + ", ".join(f"`{_yaml_text(a)}`" for a in args)
    if origin is list:
        return f"list of {_type_text(args[0])}" + (f", each {bounds}" if bounds else "")
    if hint is dict:
        return "mapping"
    return hint.__name__ + (f", {bounds}" if bounds else "")


def _yaml_text(value: Any) -> str:
    """A value as it is written in YAML: ``null``, ``true``, ``[0.1, 0.9]``, ``{}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    """Print the reference, or write it to the path given."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0].startswith("-"):
        # An option here is a mistake (e.g. --help), never a file name to write.
        sys.stdout.write("usage: python -m kdistill.configdoc [OUTPUT.md]\n")
        return 0 if args[0] in ("-h", "--help") else 2
    text = config_markdown()
    if not args:
        sys.stdout.write(text)
        return 0
    with atomic_file(Path(args[0])) as tmp:
        tmp.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
