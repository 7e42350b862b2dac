"""`kdistill doctor`: finds planted duplicates, corrupt files and patients shared across splits."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import REAL_DATA, make_image_folder, require_real_data, tiny_config, write_config
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
    """A val/ of 50 images per class (at least data.min_val_images, so a run selects on it) and
    nothing wrong: --strict passes."""
    root = make_image_folder(tmp_path / "data", per_class=50, splits=("train", "val", "test"))
    code, found = doctor_json(root, capsys, "--strict")
    assert code == 0
    assert found["unreadable"] == [] and found["duplicate_groups"] == [] and found["leaking_groups"] == {}
    assert found["folder_problems"] == [] and found["label_conflicts"] == [] and found["small_validation"] is None
    assert found["splits"]["val"] == {"NORMAL": 50, "PNEUMONIA": 50}


def strict_line(root: Path, capsys, *extra: str) -> tuple[dict, str]:
    """--strict on ``root``: exit 1 and the one-line summary (with the findings as JSON)."""
    code = main(["doctor", "--data", str(root), "--json", "--strict", *extra])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("kdistill: doctor:")]
    assert len(lines) == 1, captured.err
    return json.loads(captured.out), lines[0]


def big_clean_root(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", per_class=50, splits=("train", "val", "test"))


def test_strict_fails_on_a_single_class(tmp_path, capsys):
    """One class folder, which `run` refuses: a folder problem naming train/, and --strict exits 1."""
    root = big_clean_root(tmp_path)
    for split in ("train", "val", "test"):
        shutil.rmtree(root / split / "PNEUMONIA")
    found, line = strict_line(root, capsys)
    assert found["folder_problems"] == [f"{root / 'train'}: 1 class folder(s) (NORMAL); a run needs at least 2"]
    assert "1 folder problems" in line


def test_strict_fails_on_an_empty_class_folder(tmp_path, capsys):
    root = big_clean_root(tmp_path)
    empty = root / "test" / "PNEUMONIA"
    shutil.rmtree(empty)
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0")  # not an image: the folder is still empty for a run
    found, _ = strict_line(root, capsys)
    assert found["folder_problems"] == [f"{empty}: no images"]


def test_strict_fails_on_a_class_missing_from_a_supplied_split(tmp_path, capsys):
    """val/ without PNEUMONIA/ and with a class train/ lacks: both named."""
    root = big_clean_root(tmp_path)
    (root / "val" / "PNEUMONIA").rename(root / "val" / "VIRAL")
    found, _ = strict_line(root, capsys)
    assert found["folder_problems"] == [f"{root / 'val'}: no PNEUMONIA/ folder, which train/ has",
                                        f"{root / 'val' / 'VIRAL'}: not a class of train/"]


def test_label_conflict_names_both_class_folders(tmp_path, capsys):
    """One image filed under NORMAL and under PNEUMONIA (byte-identical): a label conflict, listed
    with both class folders in the text report and failing --strict."""
    root = big_clean_root(tmp_path)
    original = sorted((root / "train" / "NORMAL").iterdir())[0]
    copy = root / "train" / "PNEUMONIA" / "person999_bacteria_1.png"
    shutil.copy(original, copy)
    found, line = strict_line(root, capsys)
    assert found["label_conflicts"] == [{"classes": ["NORMAL", "PNEUMONIA"],
                                         "paths": sorted([str(original), str(copy)])}]
    assert "1 label conflicts" in line
    assert main(["doctor", "--data", str(root)]) == 0
    text = capsys.readouterr().out
    assert f"train/NORMAL/{original.name} = train/PNEUMONIA/{copy.name}" in text


def test_strict_fails_on_a_validation_split_too_small_to_fit_on(tmp_path, capsys):
    """24 images per class and no val/: the validation split carved from train/ (15% by default)
    is far too small for a threshold and temperature; a config carving 45% gives more, still too few."""
    root = make_image_folder(tmp_path / "data", splits=("train", "test"))
    found, line = strict_line(root, capsys)
    assert "validation too small to fit on" in line
    warning = found["small_validation"]
    assert warning.startswith("temperature and threshold fitted on ") and "fewer than 50 images" in warning
    config = write_config(tmp_path / "config.yaml", tiny_config(root, tmp_path / "out", data={"val_fraction": 0.45}))
    found, _ = strict_line(root, capsys, "--config", str(config))
    carved = int(found["small_validation"].split(" fitted on ")[1].split()[0])
    assert carved > int(warning.split(" fitted on ")[1].split()[0])


def test_unreadable_reason_names_no_memory_buffer(tmp_path, capsys):
    """A file Pillow cannot identify: the reason is plain words, not '<_io.BytesIO object at 0x...>'."""
    root = big_clean_root(tmp_path)
    (root / "train" / "NORMAL" / "IM-0900-0001.png").write_bytes(b"not a PNG at all")
    found, _ = strict_line(root, capsys)
    assert [item["reason"] for item in found["unreadable"]] == ["cannot decode (not an image format Pillow recognises)"]


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
