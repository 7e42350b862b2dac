"""data.test_match: the train/ files a regex matches form the test split (a held-out source);
validation is still carved, grouped by patient, from the rest."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, make_image_folder, real_train_files, tiny_config
from kdistill.config import DataConfig, from_dict
from kdistill.data import load_dataset
from kdistill.data.split import matching_holdout
from kdistill.preflight import log_data
from kdistill.run_folder import write_run_files
from kdistill.errors import ConfigError

CHEST_XRAY_SOURCE = r"^(NORMAL2-IM-|person\d+_virus)"


def source_file_names(patients: int = 8, per_patient: int = 3) -> dict[str, list[str]]:
    """Two sources per class, in the chest X-ray naming schemes: NORMAL ``IM-*`` and
    ``NORMAL2-IM-*``, PNEUMONIA ``person*_bacteria_*`` and ``person*_virus_*`` (other patients)."""
    normal, pneumonia = [], []
    for patient in range(1, patients + 1):
        for image in range(1, per_patient + 1):
            normal += [f"IM-{patient:04d}-{image:04d}.png", f"NORMAL2-IM-{patient:04d}-{image:04d}.png"]
            pneumonia += [f"person{patient}_bacteria_{image}.png",
                          f"person{100 + patient}_virus_{image}.png"]
    return {"NORMAL": normal, "PNEUMONIA": pneumonia}


def write_images(root: Path, names: dict[str, list[str]], split: str = "train") -> Path:
    """One tiny grayscale PNG per name under ``root/<split>/<class>/``; class 0 dark, class 1 bright."""
    rng = np.random.default_rng(0)
    for label, class_name in enumerate(CLASSES):
        folder = root / split / class_name
        folder.mkdir(parents=True, exist_ok=True)
        for name in names[class_name]:
            pixels = np.clip((70, 180)[label] + rng.normal(0, 25, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / name)
    return root


def load(root: Path, **kwargs):
    return load_dataset(DataConfig(root=str(root), input_size=8, val_fraction=0.25, cache_dir=None, **kwargs))


def file_names(split) -> set[str]:
    return {Path(name).name for name in split.names}


@pytest.fixture
def source_root(tmp_path: Path) -> Path:
    return write_images(tmp_path / "data", source_file_names())


def test_matching_files_form_the_test_split_and_nothing_else(source_root):
    """Every matching file is in test, test holds nothing else, and train and val hold none."""
    data = load(source_root, test_match=CHEST_XRAY_SOURCE)
    everything = {p.name for p in (source_root / "train").rglob("*.png")}
    matching = {name for name in everything if name.startswith("NORMAL2-IM-") or "_virus_" in name}
    assert matching and file_names(data.test) == matching
    assert not (file_names(data.train) | file_names(data.val)) & matching
    assert file_names(data.train) | file_names(data.val) == everything - matching
    assert data.test.class_counts(2) == [24, 24]


def test_split_description_names_the_held_out_match(source_root, caplog):
    """The log line of the test split says it is the held-out match, not test/ or a carve."""
    data = load(source_root, test_match=CHEST_XRAY_SOURCE)
    assert data.info["sources"]["test"].startswith(f"train/ files matching '{CHEST_XRAY_SOURCE}'")
    with caplog.at_level(logging.INFO, logger="kdistill"):
        log_data(data)
    test_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data test:")]
    assert len(test_lines) == 1 and f"train/ files matching '{CHEST_XRAY_SOURCE}'" in test_lines[0]


def test_validation_is_carved_from_the_rest_grouped_by_patient(source_root):
    """val comes from the non-matching files, shares no patient with train, and has both classes."""
    data = load(source_root, test_match=CHEST_XRAY_SOURCE)
    train, val, test = (set(s.groups) for s in (data.train, data.val, data.test))
    assert val and train.isdisjoint(val) and test.isdisjoint(train | val)
    assert data.val.class_counts(2)[0] > 0 and data.val.class_counts(2)[1] > 0
    assert data.info["sources"]["val"].startswith("carved from train/")
    assert data.info["patients_in_several_splits"] == 0


def test_patient_with_files_on_both_sides_stays_split_and_is_counted(tmp_path, caplog):
    """Files go by name: a patient key with matching and non-matching files keeps both sides,
    and the leak report counts it."""
    names = source_file_names()
    names["PNEUMONIA"].append("person101_bacteria_9.png")  # person101's other files are virus
    root = write_images(tmp_path / "data", names)
    with caplog.at_level(logging.INFO, logger="kdistill"):
        data = load(root, test_match=CHEST_XRAY_SOURCE)
    assert "person101_bacteria_9.png" in file_names(data.train) | file_names(data.val)
    assert "person101_virus_1.png" in file_names(data.test)
    assert data.info["patients_in_several_splits"] == 1
    assert any("1 patient keys appear in more than one split" in r.getMessage() for r in caplog.records)


def test_splits_json_records_the_held_out_split(source_root, tmp_path):
    """The key flows from the config to the loader, and splits.json lists the held-out files."""
    config = from_dict(tiny_config(source_root, tmp_path / "out",
                                   data={"test_match": CHEST_XRAY_SOURCE, "input_size": 8}))
    data = load_dataset(dataclasses.replace(config.data, cache_dir=None))
    write_run_files(tmp_path / "out", config, data)
    splits = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert {Path(name).name for name in splits["test"]["files"]} == file_names(data.test)
    assert all(Path(n).name.startswith("NORMAL2-IM-") or "_virus_" in n for n in splits["test"]["files"])
    assert splits["test"]["groups"] == data.test.groups


def test_invalid_regex_is_a_config_error(source_root):
    with pytest.raises(ConfigError, match=r"^data\.test_match: .* is not a valid regex"):
        load(source_root, test_match="person(")


def test_test_folder_as_well_is_refused(tmp_path):
    """A test/ folder and a held-out match both claim the test split: refuse, do not guess."""
    root = make_image_folder(tmp_path / "data", splits=("train", "test"))
    with pytest.raises(ConfigError, match=r"^data\.test_match: .*test/ exists too"):
        load(root, test_match=r"^IM-0001")


def test_match_missing_a_class_is_refused(source_root):
    """Only NORMAL files match: the test split would have no PNEUMONIA."""
    with pytest.raises(ConfigError, match=r"^data\.test_match: .*matches no train/ file of class 'PNEUMONIA'"):
        load(source_root, test_match=r"^NORMAL2-IM-")


def test_match_taking_every_file_of_a_class_is_refused(source_root):
    """Every NORMAL file matches: nothing of that class would be left to train on."""
    with pytest.raises(ConfigError, match=r"^data\.test_match: .*matches every train/ file of class 'NORMAL'"):
        load(source_root, test_match=r"^(NORMAL2-IM-|IM-|person\d+_virus)")


def test_builtin_digits_refuse_a_match():
    with pytest.raises(ConfigError, match=r"^data\.test_match: "):
        load_dataset(DataConfig(dataset="digits", input_size=8, test_match="x"))


def test_chest_xray_example_holds_out_both_classes():
    """On the real train/ names, the README's example holds out NORMAL2 normals and viral
    pneumonias, leaving IM-* normals and bacterial pneumonias to train and validate on."""
    paths, labels = real_train_files()
    keep, held = matching_holdout(paths, labels, CLASSES, CHEST_XRAY_SOURCE)
    held_names = [paths[i].name for i in held]
    assert all(n.startswith("NORMAL2-IM-") or "_virus_" in n for n in held_names)
    assert not [paths[i].name for i in keep if paths[i].name.startswith("NORMAL2-IM-") or "_virus_" in paths[i].name]
    assert np.bincount(np.asarray(labels)[held]).tolist() == [744, 1345]
