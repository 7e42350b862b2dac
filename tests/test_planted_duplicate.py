"""A byte-identical copy of an image filed under another patient's name: the doctor reports it, and
the carved splits keep the two copies on the same side (a copy in test of a training image would
be scored as unseen)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import make_image_folder, patient_file_name, require_real_data
from kdistill.cli import main
from kdistill.config import DEFAULT_PATIENT_REGEX, DataConfig
from kdistill.data import load_dataset
from kdistill.data.doctor import examine
from kdistill.data.split import merge_identical_files, patient_keys

SEEDS = range(6)


@pytest.fixture
def planted(tmp_path) -> tuple[Path, Path, Path]:
    """48 images of 16 patients; patient 0's first NORMAL image copied as patient 99's."""
    root = make_image_folder(tmp_path / "data", per_class=24, per_patient=3)
    original = root / "train" / "NORMAL" / patient_file_name(0, 0, 0)
    copy = original.with_name(patient_file_name(0, 99, 0))
    shutil.copyfile(original, copy)
    return root, original, copy


def test_doctor_reports_the_planted_copy(planted, capsys):
    root, original, copy = planted
    found = examine(root, DEFAULT_PATIENT_REGEX)
    assert found["duplicate_groups"] == [sorted([str(original), str(copy)])]
    assert main(["doctor", "--data", str(root)]) == 0
    out = capsys.readouterr().out
    assert "byte-identical duplicate groups: 1" in out
    assert f"{original.name} = {copy.name}" in out  # names in sorted order


def test_identical_files_share_one_key(planted):
    """Different patient keys by name, one key once the bytes are compared; other files keep theirs."""
    root, original, copy = planted
    paths = sorted((root / "train" / "NORMAL").iterdir())
    by_name = patient_keys(paths, DEFAULT_PATIENT_REGEX)
    merged = merge_identical_files(paths, by_name)
    key = dict(zip(paths, merged))
    assert dict(zip(paths, by_name))[copy] != dict(zip(paths, by_name))[original]
    assert key[copy] == key[original]
    # the merged key covers every image of both patients, so patient 0's other images follow too
    assert {p.name for p in paths if key[p] == key[original]} == {
        patient_file_name(0, 0, i) for i in range(3)} | {copy.name}
    assert sum(a != b for a, b in zip(by_name, merged)) == 1  # nothing else changed


def test_carved_splits_keep_the_copies_together(planted):
    """Over several split seeds, the original and its copy always land in the same split."""
    root, original, copy = planted
    for seed in SEEDS:
        data = load_dataset(DataConfig(root=str(root), input_size=16, val_fraction=0.25, test_fraction=0.25,
                                       split_seed=seed))
        where = {name: split_name for split_name, split in
                 (("train", data.train), ("val", data.val), ("test", data.test)) for name in split.names}
        assert where[str(original)] == where[str(copy)], f"split seed {seed}: {where[str(original)]} " \
                                                         f"and {where[str(copy)]}"


def test_merging_is_transitive(tmp_path):
    """a (patient p1) = b (p2) and c (p2) = d (p3): p1, p2 and p3 become one key, the smallest."""
    files = {"a": (b"one", "p1"), "b": (b"one", "p2"), "c": (b"two", "p2"), "d": (b"two", "p3"),
             "e": (b"six", "p4")}  # e: same size as the others, different bytes
    paths = []
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content)
        paths.append(tmp_path / name)
    keys = [key for _, key in files.values()]
    assert merge_identical_files(paths, keys) == ["p1", "p1", "p1", "p1", "p4"]


def test_real_chest_xray_duplicates_are_already_within_one_patient():
    """On the real folder every byte-identical group already shares a patient name, so merging
    changes no key (the splits stay as they were)."""
    train = require_real_data() / "train"
    paths = sorted(train.rglob("*.jpeg"))
    keys = patient_keys(paths, DEFAULT_PATIENT_REGEX)
    assert merge_identical_files(paths, keys) == keys
