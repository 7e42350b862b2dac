"""Tests reach kdistill through its public names: a test that imports an underscore name, or reads,
patches or replaces one on a kdistill module, pins an internal detail, so a refactor that keeps the
behaviour would still break it."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

TESTS = Path(__file__).resolve().parent
# Calls whose (object, "name") arguments reach an attribute by its name: getattr(loop, "_x"),
# monkeypatch.setattr(loop, "_x", ...), and likewise with a dotted "kdistill.a._x" target.
BY_NAME_CALLS = {"getattr", "setattr", "delattr", "hasattr"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_kdistill(module: str | None) -> bool:
    return (module or "").split(".")[0] == "kdistill"


def is_module(dotted: str) -> bool:
    """Whether ``dotted`` (``kdistill.a.b``) names a module, as ``from kdistill.a import b`` binds it."""
    parent, _, name = dotted.rpartition(".")
    if isinstance(getattr(importlib.import_module(parent), name, None), ModuleType):
        return True
    try:
        return importlib.util.find_spec(dotted) is not None
    except ModuleNotFoundError:  # ``parent`` is a module, not a package: ``name`` is no submodule
        return False


def kdistill_module_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> kdistill module it is bound to, from the file's imports (any scope)."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_kdistill(alias.name):
                    # ``import kdistill.a.b`` binds ``kdistill``; ``import kdistill.a.b as m`` binds m.
                    bound[alias.asname or "kdistill"] = alias.name if alias.asname else "kdistill"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and is_kdistill(node.module):
            for alias in node.names:
                if alias.name != "*" and is_module(f"{node.module}.{alias.name}"):
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def attribute_path(node: ast.Attribute, bound: dict[str, str]) -> list[str] | None:
    """``module.a.b`` as [module's dotted name, "a", "b"] when the chain starts at a kdistill module."""
    parts = [node.attr]
    value = node.value
    while isinstance(value, ast.Attribute):
        parts.insert(0, value.attr)
        value = value.value
    if isinstance(value, ast.Name) and value.id in bound:
        return [bound[value.id], *parts]
    return None


def by_name_target(node: ast.Call, bound: dict[str, str]) -> str | None:
    """``kdistill.a._x`` for getattr/setattr-style calls naming an attribute of a kdistill module."""
    func = node.func
    called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if called not in BY_NAME_CALLS or not node.args:
        return None
    target, name = node.args[0], node.args[1] if len(node.args) > 1 else None
    if isinstance(target, ast.Constant) and isinstance(target.value, str) and is_kdistill(target.value):
        return target.value  # monkeypatch.setattr("kdistill.a._x", value)
    if isinstance(target, ast.Name) and target.id in bound and isinstance(name, ast.Constant) \
            and isinstance(name.value, str):
        return f"{bound[target.id]}.{name.value}"
    return None


def private_kdistill_names(path: Path) -> list[str]:
    """Each underscore kdistill name ``path`` imports or reaches on a kdistill module, dotted."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bound = kdistill_module_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and is_kdistill(node.module):
            found += [f"{node.module}.{alias.name}" for alias in node.names if is_private(alias.name)]
        elif isinstance(node, ast.Attribute) and (chain := attribute_path(node, bound)) \
                and is_private(node.attr):
            found.append(".".join(chain))
        elif isinstance(node, ast.Call) and (target := by_name_target(node, bound)) \
                and any(is_private(part) for part in target.split(".")):
            found.append(target)
    return found


def test_the_check_finds_a_private_import(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text("from kdistill.engine.loop import fit, _hidden\nfrom os import _exit\n")
    assert private_kdistill_names(sample) == ["kdistill.engine.loop._hidden"]


def test_the_check_finds_private_attributes_of_kdistill_modules(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import os\n"
        "import kdistill.engine.loop as loop\n"
        "import kdistill.deploy.export\n"
        "from kdistill.distill import losses, build_method\n"
        "loop._hidden = loop.fit\n"
        "kdistill.deploy.export._inner()\n"
        "losses._term(os._exit, build_method._cache, loop.__name__)\n"
        "def test(monkeypatch):\n"
        "    monkeypatch.setattr(loop, '_swapped', None)\n"
        "    monkeypatch.setattr(loop, 'fit', None)\n"
        "    monkeypatch.setattr('kdistill.pipeline._by_path', None)\n"
        "    monkeypatch.setattr('kdistill.pipeline.fit', None)\n"
        "    getattr(losses, '_read')\n")
    # build_method is a function, not a module, and os is not kdistill: neither is reported.
    assert sorted(private_kdistill_names(sample)) == sorted([
        "kdistill.engine.loop._hidden", "kdistill.deploy.export._inner", "kdistill.distill.losses._term",
        "kdistill.engine.loop._swapped", "kdistill.pipeline._by_path", "kdistill.distill.losses._read"])


@pytest.mark.parametrize("name", [path.name for path in sorted(TESTS.glob("*.py"))])
def test_no_test_reaches_a_private_kdistill_name(name):
    assert private_kdistill_names(TESTS / name) == []
