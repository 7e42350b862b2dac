"""The pipeline on a few real chest X-rays from ../shared/data/chest_xray (skipped when absent)."""

from __future__ import annotations

import json

import pytest

from conftest import leftover_temp_files, require_real_data, tiny_config, write_config
from kdistill.cli import main
from test_grouping_independent import assert_no_patient_in_two_splits

PER_CLASS = 11  # max_images_per_class applies per split: 3 splits x 2 classes x 11 = 66 images


@pytest.fixture
def real_root():
    return require_real_data()


@pytest.mark.slow
def test_pipeline_on_66_real_images(real_root, tmp_path, capsys):
    """Run the whole pipeline at 32x32 on 66 real images: patient-grouped carved splits, three
    models in results.json, PNEUMONIA as the positive class, nothing skipped."""
    out = tmp_path / "out"
    config = tiny_config(real_root, out,
                         teacher={"model": "resnet18", "model_args": {},
                                  "train": {"epochs": 1, "batch_size": 16, "lr": 0.001}},
                         student={"model": "reference_student",
                                  "train": {"epochs": 2, "batch_size": 16, "lr": 0.001}})
    config["data"].update({"input_size": 32, "val_fraction": 0.15, "test_fraction": 0.15,
                           "max_images_per_class": PER_CLASS})
    code = main(["run", str(write_config(tmp_path / "config.yaml", config))])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    dataset = results["dataset"]
    assert dataset["classes"] == ["NORMAL", "PNEUMONIA"] and dataset["positive_class"] == "PNEUMONIA"
    assert dataset["sizes"] == {"train": 2 * PER_CLASS, "test": 2 * PER_CLASS, "val": 2 * PER_CLASS}
    assert dataset["patients_in_several_splits"] == 0 and dataset["skipped_files"] == []
    assert [row["role"] for row in results["models"]] == ["teacher", "baseline", "distilled"]
    assert all(row["auc"] is not None and row["sensitivity"] is not None for row in results["models"])
    splits = json.loads((out / "splits.json").read_text())
    assert set(splits["train"]["groups"]).isdisjoint(splits["test"]["groups"])
    # The patient of each file read from its name by the test itself, for all three pairs.
    assert_no_patient_in_two_splits({name: split["files"] for name, split in splits.items()})
    assert leftover_temp_files(out) == []
