"""`kdistill doctor`: finds planted duplicates, corrupt files and patients shared across splits."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import REAL_DATA, make_image_folder, require_real_data
from kdistill.cli import main
from test_bad_input import add_bad_files


@pytest.fixture
def troubled_root(tmp_path: Path) -> dict:
    """train/ and test/ with a duplicate inside train/, one across splits, corrupt and zero-byte
    files, a .DS_Store, and patient IM-0003 present in both splits."""
    root = make_image_folder(tmp_path / "data", splits=("train", "test"))
    bad = add_bad_files(root)
    normal_train = sorted((root / "train" / "NORMAL").glob("IM-000*.png"))
    within = root / "train" / "NORMAL" / "IM-0800-0001.png"
    shutil.copy(normal_train[0], within)
    across = root / "test" / "NORMAL" / "IM-0801-0001.png"
    shutil.copy(normal_train[1], across)
    leaked = root / "test" / "NORMAL" / "IM-0003-0099.png"  # patient IM-0003 is also in train/
    shutil.copy(normal_train[-1], leaked)
    zero = root / "train" / "PNEUMONIA" / "person901_bacteria_1.jpeg"
    zero.write_bytes(b"")
    return {"root": root, "within": (normal_train[0], within), "across": (normal_train[1], across),
            "leaked": (normal_train[-1], leaked), "zero": zero, **bad}


def doctor_json(root: Path, capsys, *extra: str) -> tuple[int, dict]:
    code = main(["doctor", "--data", str(root), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_doctor_finds_every_planted_problem(troubled_root, capsys):
    code, found = doctor_json(troubled_root["root"], capsys)
    assert code == 0
    unreadable = {item["path"]: item["reason"] for item in found["unreadable"]}
    assert set(unreadable) == {str(troubled_root[k]) for k in ("garbage", "truncated", "zero")}
    assert unreadable[str(troubled_root["zero"])] == "zero-byte file"
    assert found["non_images"] == [str(troubled_root["ds_store"])]
    pairs = {name: sorted(map(str, troubled_root[name])) for name in ("within", "across", "leaked")}
    assert sorted(found["duplicate_groups"]) == sorted(pairs.values())
    assert sorted(found["duplicate_groups_across_splits"]) == sorted([pairs["across"], pairs["leaked"]])
    assert found["leaking_groups"]["IM-0003"] == ["test", "train"]
    assert found["splits"]["train"]["NORMAL"] == 24 + 1  # the planted duplicate; garbage excluded


def test_strict_fails_on_leakage_and_unreadable_files(troubled_root, capsys):
    code = main(["doctor", "--data", str(troubled_root["root"]), "--strict"])
    assert code == 1
    assert "3 unreadable images, 1 patients in more than one split" in capsys.readouterr().err


def test_clean_folder_passes_strict(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", splits=("train", "test"))
    code, found = doctor_json(root, capsys, "--strict")
    assert code == 0
    assert found["unreadable"] == [] and found["duplicate_groups"] == [] and found["leaking_groups"] == {}
    assert found["splits"] == {"train": {"NORMAL": 24, "PNEUMONIA": 24}, "test": {"NORMAL": 24, "PNEUMONIA": 24}}


def test_broken_links_are_unreadable_not_invisible(tmp_path, capsys):
    """A dangling link and a self-loop named like images are listed, as `kdistill run` lists them,
    and --strict fails."""
    root = make_image_folder(tmp_path / "data", splits=("train", "test"))
    dangling = root / "train" / "NORMAL" / "gone.png"
    dangling.symlink_to(tmp_path / "nowhere.png")
    loop = root / "train" / "NORMAL" / "loop.png"
    loop.symlink_to(loop)
    code, found = doctor_json(root, capsys, "--strict")
    assert code == 1
    assert sorted(u["path"] for u in found["unreadable"]) == sorted([str(dangling), str(loop)])


def test_missing_folder_is_one_line_error(tmp_path, capsys):
    code = main(["doctor", "--data", str(tmp_path / "nope")])
    assert code == 2
    assert "nope: data folder not found" in capsys.readouterr().err


def test_doctor_on_the_real_chest_xray_folder(capsys):
    """Every byte-identical group on disk is found: compared with grouping the files by their
    SHA-1 here (an independent hash of the same bytes)."""
    require_real_data()
    code, found = doctor_json(REAL_DATA, capsys)
    assert code == 0
    by_sha1 = defaultdict(set)
    for path in (REAL_DATA / "train").rglob("*.jpeg"):
        by_sha1[hashlib.sha1(path.read_bytes()).hexdigest()].add(str(path))
    expected = sorted(sorted(g) for g in by_sha1.values() if len(g) > 1)
    assert found["duplicate_groups"] == expected
    assert len(expected) >= 20  # the folder is known to hold dozens of duplicated files
    assert found["splits"]["train"] == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert found["leaking_groups"] == {}
