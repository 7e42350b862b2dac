"""No patient in two splits, checked with a patient key this test derives from the file names itself.

The splitter's own ``groups`` cannot prove the grouping: if its regex matched nothing, every file
would be its own group and a check on those groups would still pass. Here the key comes from a
separate regex written for the Kaggle chest X-ray names, and every pair of splits is compared.
"""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path

import numpy as np

from conftest import make_image_folder, real_train_files
from kdistill.config import DEFAULT_PATIENT_REGEX, DataConfig
from kdistill.data import load_dataset
from kdistill.data.split import grouped_holdout, patient_keys

# The three Kaggle naming schemes, read independently of kdistill's data.patient_regex:
#   person1000_bacteria_2931.jpeg -> person1000     (PNEUMONIA: person number)
#   IM-0115-0001.jpeg             -> IM-0115        (NORMAL: patient number, then image number)
#   NORMAL2-IM-0587-0001.jpeg     -> NORMAL2-IM-0587 (a second NORMAL series, its own numbering)
#   IM-0640-0001-0002.jpeg, person447_virus_921_1.jpeg: some names carry a further number
NAME_PATTERN = re.compile(r"(?P<person>person\d+)_(?:bacteria|virus)(?:_\d+)+\.\w+"
                          r"|(?P<study>(?:NORMAL2-)?IM-\d{4})(?:-\d{4})+\.\w+")


def independent_patient_key(file_name: str) -> str:
    """The patient of a chest X-ray file name; every name must parse (no silent fallback)."""
    match = NAME_PATTERN.fullmatch(Path(file_name).name)
    assert match is not None, f"{file_name}: not a chest X-ray style name"
    return match.group("person") or match.group("study")


def assert_no_patient_in_two_splits(files_by_split: dict[str, list[str]]) -> None:
    """train/val, train/test and val/test share no patient, by the independent key."""
    patients = {split: {independent_patient_key(f) for f in files} for split, files in files_by_split.items()}
    assert set(patients) == {"train", "val", "test"}
    for a, b in combinations(sorted(patients), 2):
        shared = patients[a] & patients[b]
        assert not shared, f"{a} and {b} share patients {sorted(shared)[:5]}"


def test_the_independent_key_reads_the_three_naming_schemes():
    """The test's own key: person number, IM study number, NORMAL2 study number."""
    assert independent_patient_key("person1000_virus_1681.jpeg") == "person1000"
    assert independent_patient_key("person1000_bacteria_2931.jpeg") == "person1000"
    assert independent_patient_key("IM-0115-0001.jpeg") == "IM-0115"
    assert independent_patient_key("NORMAL2-IM-0587-0001.jpeg") == "NORMAL2-IM-0587"
    assert independent_patient_key("IM-0640-0001-0002.jpeg") == "IM-0640"
    assert independent_patient_key("person447_virus_921_1.jpeg") == "person447"


def test_load_dataset_splits_share_no_patient_by_file_name(tmp_path):
    """Carved val and test from a folder of 4 images per patient, over three split seeds: no
    patient (by the test's own key) in two splits, and the loader merged files into patients."""
    root = make_image_folder(tmp_path / "data", per_class=32, per_patient=4)
    for seed in range(3):
        data = load_dataset(DataConfig(root=str(root), input_size=16, val_fraction=0.25, test_fraction=0.25,
                                       split_seed=seed, cache_dir=None))
        splits = {"train": data.train, "val": data.val, "test": data.test}
        assert_no_patient_in_two_splits({name: split.names for name, split in splits.items()})
        files = sum(len(split.names) for split in splits.values())
        groups = {g for split in splits.values() for g in split.groups}
        assert len(groups) == files // 4  # 64 images of 16 patients: the loader's groups are patients


def carve_like_the_loader(labels: list[int], groups: list[str]) -> dict[str, np.ndarray]:
    """test, then val from the rest, as ``load_dataset`` carves a folder that has only train/
    (its default fractions 0.15/0.15 and split seeds 0 and 1)."""
    keep, test = grouped_holdout(labels, groups, 0.15, 0)
    kept_labels = [labels[i] for i in keep]
    kept_groups = [groups[i] for i in keep]
    train, val = grouped_holdout(kept_labels, kept_groups, 0.15, 1)
    return {"train": keep[train], "val": keep[val], "test": test}


def test_real_chest_xray_names_carved_share_no_patient():
    """All 5,216 real training names: kdistill's keys merge files into fewer patients than files,
    and the carved train/val/test share no patient by the test's own key."""
    paths, labels = real_train_files()
    groups = patient_keys(paths, DEFAULT_PATIENT_REGEX)
    independent = {independent_patient_key(p.name) for p in paths}
    assert len(set(groups)) < len(paths)  # grouping did merge files
    assert len(set(groups)) == len(independent)  # and into the same patients the names say
    splits = carve_like_the_loader(labels, groups)
    assert_no_patient_in_two_splits({name: [paths[i].name for i in idx] for name, idx in splits.items()})
    assert sum(len(idx) for idx in splits.values()) == len(paths)
