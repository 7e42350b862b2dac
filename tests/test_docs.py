"""docs/config.md is generated from kdistill/config.py and must match it; every key has a meaning."""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path

import yaml

from kdistill.config import Config, from_dict
from kdistill.configdoc import REGENERATE, config_markdown

CONFIG_DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def config_fields(cls: type = Config, prefix: str = "") -> dict[str, tuple[dataclasses.Field, bool]]:
    """Every field of the config, dotted, with whether it is a section (a nested dataclass)."""
    hints = typing.get_type_hints(cls)
    found = {}
    for spec in dataclasses.fields(cls):
        is_section = dataclasses.is_dataclass(hints[spec.name])
        found[prefix + spec.name] = (spec, is_section)
        if is_section:
            found.update(config_fields(hints[spec.name], f"{prefix}{spec.name}."))
    return found


def documented_rows() -> dict[str, list[str]]:
    """``{key: [type, default, meaning]}`` from the tables of docs/config.md."""
    rows = {}
    for line in CONFIG_DOC.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_config_doc_matches_the_generator():
    """A field added, removed or re-described in config.py without regenerating the doc fails here."""
    expected = config_markdown()
    actual = CONFIG_DOC.read_text() if CONFIG_DOC.is_file() else ""
    if actual != expected:
        diff = "".join(list(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True),
                                                 "docs/config.md", "generated"))[:40])
        raise AssertionError(f"docs/config.md is out of date; regenerate it with:\n    {REGENERATE}\n{diff}")


def test_every_config_field_has_a_meaning():
    """The generator reads each field's metadata["help"]; an undocumented field is a failure."""
    missing = [key for key, (spec, _) in config_fields().items() if not spec.metadata.get("help", "").strip()]
    assert not missing, f"config fields without metadata help: {missing}"


def test_every_leaf_key_is_documented_with_its_allowed_values():
    """Each settable key has a row; a Literal key's row names every allowed value."""
    rows = documented_rows()
    assert set(rows) == {key for key, (_, is_section) in config_fields().items() if not is_section}
    assert {"student.train.lr", "data.input_size", "distill.cache_dtype", "seeds"} <= set(rows)
    for value in ("adamw", "sgd"):
        assert f"`{value}`" in rows["student.train.optimizer"][0]
    assert rows["distill.cache_dtype"][0] == "one of `float32`, `float16`"


def test_documented_defaults_are_the_real_defaults():
    """Each row's default, read back as YAML and loaded as that key, gives Config()'s own value."""
    defaults = Config()
    for key, (_, default, _) in documented_rows().items():
        if key in ("data.root", "data.dataset"):  # exactly one must be set, so null cannot load alone
            continue
        value = yaml.safe_load(default.strip("`"))
        config = from_dict(_nested(key, value, base={"data": {"root": "/data"}}))
        assert _get(config, key) == _get(defaults, key), key


def _nested(key: str, value, base: dict) -> dict:
    parts = key.split(".")
    node = base
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return base


def _get(config, key: str):
    for part in key.split("."):
        config = getattr(config, part)
    return config


def test_every_student_and_method_is_named_in_the_reference():
    """docs/config.md names every kdistill student and every registered distillation method."""
    import kdistill.distill  # noqa: F401  (registers the methods)
    from kdistill.distill.registry import METHODS
    from kdistill.models.students import STUDENTS

    rows = documented_rows()
    students = rows["student.model"][2]
    tiny = [name for name in STUDENTS if name.startswith("tiny_cnn_d")]
    assert all(f"`{name}`" in students for name in STUDENTS if name not in tiny[1:-1]), students
    methods = rows["distill.method"][2]
    assert all(re.search(rf"\b{re.escape(name)}\b", methods) for name in METHODS), (sorted(METHODS), methods)
