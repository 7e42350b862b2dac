"""A threshold or temperature fitted on too few validation images (fewer than 50, or fewer than 10
of a class): `run` warns in its log, results.json and both reports; the rule itself at its edges."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from conftest import make_image_folder, tiny_config
from kdistill import pipeline
from kdistill.config import from_dict
from kdistill.data import load_dataset
from kdistill.eval.sample_size import MIN_FIT_IMAGES, MIN_FIT_PER_CLASS, fitted_on_validation, small_fit_warning


def test_the_rule_at_its_edges():
    both = ["temperature", "threshold"]
    assert small_fit_warning({"A": 25, "B": 25}, both) is None  # 50 images, 25 of each: enough
    short = small_fit_warning({"A": 25, "B": 24}, both)
    assert short.startswith("temperature and threshold fitted on 49 validation images (A 25 / B 24)")
    assert f"fewer than {MIN_FIT_IMAGES} images" in short and "of A" not in short
    scarce = small_fit_warning({"A": 91, "B": MIN_FIT_PER_CLASS - 1}, both)
    assert f"fewer than {MIN_FIT_PER_CLASS} of B" in scarce and "images and" not in scarce
    assert small_fit_warning({"A": 3, "B": 3}, []) is None  # nothing fitted: nothing to warn about


@pytest.mark.parametrize("temperature,rule,binary,expected", [
    (True, "balanced_accuracy", True, ["temperature", "threshold"]),
    (True, "prior", True, ["temperature"]),
    (False, "argmax", True, []),
    (False, "youden", False, []),  # more than two classes: arg-max, no threshold
])
def test_what_a_run_fits_on_validation(temperature, rule, binary, expected):
    assert fitted_on_validation(temperature, rule, binary) == expected


def test_calibration_warnings_read_the_validation_split(image_root, caplog):
    """9 validation images carved from a tiny folder: one warning, logged; with nothing fitted
    (no temperature, prior rule) none."""
    caplog.set_level(logging.INFO, logger="kdistill")
    config = from_dict(tiny_config(image_root, image_root / "unused"))
    data = load_dataset(config.data)
    warnings = pipeline.calibration_warnings(data, config)
    assert len(warnings) == 1 and f"fitted on {len(data.val)} validation images" in warnings[0]
    assert f"warning: {warnings[0]}" in caplog.text
    quiet = dataclasses.replace(config, calibration=dataclasses.replace(
        config.calibration, temperature=False, threshold_rule="prior"))
    assert pipeline.calibration_warnings(data, quiet) == []


def test_a_large_enough_validation_split_gives_no_warning(tmp_path):
    """A supplied val/ of 50 images per class: no warning."""
    root = make_image_folder(tmp_path / "data", per_class=50, splits=("train", "val"))
    config = from_dict(tiny_config(root, tmp_path / "out"))
    assert pipeline.calibration_warnings(load_dataset(config.data), config) == []


@pytest.mark.slow
def test_run_puts_the_warning_in_results_and_both_reports(image_root, tmp_path):
    out = tmp_path / "out"
    pipeline.run(from_dict(tiny_config(image_root, out, export=False)))
    warnings = json.loads((out / "results.json").read_text())["warnings"]
    assert len(warnings) == 1 and "too few to trust" in warnings[0]
    assert f"**Warning:** {warnings[0]}." in (out / "report.md").read_text()
    assert "<strong>Warning:</strong> temperature and threshold fitted on" in (out / "report.html").read_text()
