"""Patient-grouped splits: one patient's images never land on both sides of a split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder, real_train_files
from kdistill.config import DEFAULT_PATIENT_REGEX, DataConfig
from kdistill.data import load_dataset
from kdistill.data.split import grouped_holdout, patient_keys


def chest_xray_style_names(seed: int = 0) -> tuple[list[Path], list[int]]:
    """~60 patients with 1-6 images each, in the three naming schemes of the Kaggle data."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for patient in range(1, 61):
        for image in range(int(rng.integers(1, 7))):
            if patient % 3 == 0:
                name, label = f"IM-{patient:04d}-{image + 1:04d}.jpeg", 0
            elif patient % 3 == 1:
                name, label = f"NORMAL2-IM-{patient:04d}-{image + 1:04d}.jpeg", 0
            else:
                kind = "bacteria" if image % 2 else "virus"
                name, label = f"person{patient}_{kind}_{100 * patient + image}.jpeg", 1
            paths.append(Path(name))
            labels.append(label)
    return paths, labels


def assert_no_shared_patient(groups, keep, held):
    keep_groups = {groups[i] for i in keep}
    held_groups = {groups[i] for i in held}
    assert keep_groups.isdisjoint(held_groups), keep_groups & held_groups


def test_patient_keys_on_chest_xray_names():
    """The default regex keys each scheme by patient; unmatched names become their own group."""
    names = ["person123_bacteria_456.jpeg", "person123_virus_457.jpeg", "person12_bacteria_1.jpeg",
             "IM-0115-0001.jpeg", "IM-0115-0002.jpeg", "NORMAL2-IM-0587-0001.jpeg", "scan.png"]
    keys = patient_keys([Path(n) for n in names], DEFAULT_PATIENT_REGEX)
    assert keys == ["person123", "person123", "person12", "IM-0115", "IM-0115", "NORMAL2-IM-0587",
                    "file:scan.png"]


@pytest.mark.parametrize("fraction", [0.15, 0.25])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_holdout_keeps_patients_on_one_side(fraction, seed):
    """Synthetic chest X-ray names with several images per patient: no patient on both sides,
    every image on exactly one side, both classes held out, about the asked fraction."""
    paths, labels = chest_xray_style_names(seed)
    groups = patient_keys(paths, DEFAULT_PATIENT_REGEX)
    keep, held = grouped_holdout(labels, groups, fraction, seed)
    assert_no_shared_patient(groups, keep, held)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(len(labels)))
    assert set(np.asarray(labels)[held]) == {0, 1}
    assert abs(len(held) / len(labels) - fraction) < 0.1


def test_grouped_holdout_on_real_chest_xray_names():
    """The real file names of ../shared/data/chest_xray/train all carry a patient key, and the
    carved split shares no patient."""
    paths, labels = real_train_files()
    groups = patient_keys(paths, DEFAULT_PATIENT_REGEX)
    assert not [g for g in groups if g.startswith("file:")]
    assert len(set(groups)) < len(groups)  # some patients do have several images
    keep, held = grouped_holdout(labels, groups, 0.15, 0)
    assert_no_shared_patient(groups, keep, held)


def test_load_dataset_carved_splits_share_no_patient(image_root):
    """val and test carved from train/: the three splits' patient groups are disjoint."""
    data = load_dataset(DataConfig(root=str(image_root), input_size=16, val_fraction=0.25, test_fraction=0.25))
    train, val, test = (set(s.groups) for s in (data.train, data.val, data.test))
    assert train and val and test
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    assert len(data.train) + len(data.val) + len(data.test) == 48
    assert data.info["patients_in_several_splits"] == 0
    assert data.classes == ["NORMAL", "PNEUMONIA"] and data.positive_class == "PNEUMONIA"


def test_load_dataset_uses_supplied_folders(tmp_path):
    """train/ val/ test/ supplied and val/ big enough: used as they are, not re-carved."""
    root = make_image_folder(tmp_path / "data", per_class=12, splits=("train", "val", "test"))
    data = load_dataset(DataConfig(root=str(root), input_size=16, min_val_images=10))
    assert data.info["sources"] == {"train": "train/", "val": "val/", "test": "test/"}
    assert [len(data.train), len(data.val), len(data.test)] == [24, 24, 24]
    assert all("/val/" in n for n in data.val.names)


def test_small_val_folder_is_replaced_by_a_carved_split(tmp_path):
    """A val/ below min_val_images (the Kaggle val/ has 16 images) is not used for selection."""
    root = make_image_folder(tmp_path / "data", per_class=24, splits=("train",))
    make_image_folder(tmp_path / "small", per_class=4, splits=("val",), seed=1)
    (tmp_path / "small" / "val").rename(root / "val")
    data = load_dataset(DataConfig(root=str(root), input_size=16, val_fraction=0.25, test_fraction=0.25,
                                   min_val_images=100))
    assert data.info["unused"] == {"val/": 8}
    assert not any("/val/" in n for n in data.val.names)


def test_max_images_per_class_limits_each_split(image_root):
    """max_images_per_class caps every class in every split."""
    data = load_dataset(DataConfig(root=str(image_root), input_size=16, val_fraction=0.25, test_fraction=0.25,
                                   max_images_per_class=4))
    for split in (data.train, data.val, data.test):
        assert max(split.class_counts(2)) <= 4
    assert max(data.train.class_counts(2)) == 4
