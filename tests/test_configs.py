"""The ready configs in configs/: each loads as it is (only settings that exist, valid values), and
every parameter count written in a comment is what kdistill builds for that section's model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from kdistill.config import Config, load_config
from kdistill.models.size import count_parameters
from kdistill.models import build_model
from kdistill.models.checkpoint import architecture

CONFIGS = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))
# A count: 100,474 or 3.37 M / 73.4 k, then (after the comment's line breaks are joined) the word
# that says what it counts; "1,797 images" is not a parameter count, "100,474 params" and a bare
# "has 100,474;" are.
COUNT = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?\s?[kM]\b)\s*(\w*)")
PARAMETER_WORDS = ("", "parameters", "params")
# A model named in the clause just before a count is the one counted (else the section's model).
NAMED_MODELS = {"reference student": "reference_student", "reference_student": "reference_student"}


def section_comments(path: Path) -> dict[str, str]:
    """Comment text per top-level section (``teacher``, ``student``, ...; ``""`` before the
    first), each comment's lines joined with spaces so a count and its word may span a line break."""
    comments: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        match = re.match(r"^(\w+):", line)
        if match:
            section = match.group(1)
        if "#" in line:
            comments.setdefault(section, []).append(line.split("#", 1)[1].strip())
    return {name: " ".join(lines) for name, lines in comments.items()}


def parameter_counts(text: str) -> list[tuple[str, float, float, int, str | None]]:
    """``(as written, number, unit, decimals, named model or None)`` of each parameter count in
    ``text``: ``3.37 M`` -> ``(3.37, 1e6, 2)``, ``100,474`` -> ``(100474, 1, 0)``."""
    found = []
    for match in COUNT.finditer(text):
        written, word = match.group(1), match.group(2)
        if word not in PARAMETER_WORDS:
            continue
        clause = re.split(r"[(:;.]\s", text[:match.start()])[-1].lower()
        named = next((model for words, model in NAMED_MODELS.items() if words in clause), None)
        digits = written.replace(",", "").rstrip("kM ").strip()
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        found.append((written, float(digits), {"k": 1e3, "M": 1e6}.get(written[-1], 1.0), decimals, named))
    return found


def built_parameters(config: Config, section: str, name: str | None) -> int:
    """Parameters of ``section``'s model (or the model ``name``) as a run builds it; a pretrained
    teacher is built without its weights (the count is the same) and with the data's head."""
    classes = 10 if config.data.dataset == "digits" else 2
    cfg = getattr(config, section)
    model_name, model_args = (name, {}) if name else (cfg.model, cfg.model_args)
    channels = (config.student.channels or config.data.channels) if section == "student" else config.data.channels
    arch = architecture(model_name, classes, config.data.input_size, channels, model_args)
    return count_parameters(build_model(**{"name": model_name, **arch["args"]}))


def test_the_configs_folder_holds_the_ready_configs():
    assert {"demo.yaml", "chest_xray.yaml", "chest_xray_pretrained.yaml"} <= {path.name for path in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_each_config_loads_as_it_is(path):
    """No overrides: an unknown or misspelt key, a wrong type or a value out of range fails here."""
    config = load_config(path)
    assert config.out.startswith("runs/")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_parameter_counts_in_comments_are_what_the_code_builds(path):
    config = load_config(path)
    checked = []
    for section, text in section_comments(path).items():
        for written, number, unit, decimals, named in parameter_counts(text):
            if section not in ("teacher", "student") and named is None:
                raise AssertionError(f"{path.name}: {written!r} in the {section or 'opening'} comment names no model")
            actual = built_parameters(config, section if section in ("teacher", "student") else "student", named)
            assert round(actual / unit, decimals) == number, (
                f"{path.name} {section}: the comment says {written} parameters "
                f"({named or getattr(config, section).model}); the code builds {actual:,}")
            checked.append((section, written))
    if path.name.startswith("chest_xray"):
        assert checked, f"{path.name}: no parameter count found; the pattern no longer reads its comments"


def test_the_count_reader_reads_the_forms_the_configs_use():
    text = ("Conv(3,4,3)+BN: 100,474 params at 224. EfficientNet-Lite0 (3.37 M parameters with the head); "
            "budget: 73,386 parameters (the reference student, one conv block, has 100,474; kept) 1,797 images")
    assert parameter_counts(text) == [
        ("100,474", 100474.0, 1.0, 0, None), ("3.37 M", 3.37, 1e6, 2, None), ("73,386", 73386.0, 1.0, 0, None),
        ("100,474", 100474.0, 1.0, 0, "reference_student")]
