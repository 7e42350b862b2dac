"""Bad input through the command line: exit code 2, one line naming the file or key, and nothing
half-written in the output folder; files a user expects to be ignored are skipped and listed."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from PIL import Image

from conftest import leftover_temp_files, make_image_folder, tiny_config, write_config
from kdistill.cli import main
from kdistill.errors import ConfigError


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit 2, exactly one `kdistill: error:` line that contains every needle, no traceback."""
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("kdistill: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_nothing_half_written(out: Path) -> None:
    assert not (out / "results.json").exists()
    assert not (out / "report.md").exists()
    if out.exists():
        assert leftover_temp_files(out) == []


def run_on(root: Path, tmp_path: Path, capsys, *overrides: str) -> tuple[int, str, Path]:
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_config(root, out))
    code, err = run_cli(["run", str(config), *overrides], capsys)
    return code, err, out


def test_missing_data_folder(tmp_path, capsys):
    """data.root that does not exist: the error names the folder."""
    missing = tmp_path / "no_such_folder"
    code, err, out = run_on(missing, tmp_path, capsys)
    assert_one_line_error(code, err, str(missing), "not found")
    assert not out.exists()


def test_missing_config_file(tmp_path, capsys):
    """A config path that does not exist is named in the error."""
    code, err = run_cli(["run", str(tmp_path / "nope.yaml")], capsys)
    assert_one_line_error(code, err, "nope.yaml", "not found")


def test_empty_class_folder(image_root, tmp_path, capsys):
    """A class folder without images is an error naming that folder."""
    empty = image_root / "train" / "NORMAL"
    shutil.rmtree(empty)
    empty.mkdir()
    code, err, out = run_on(image_root, tmp_path, capsys)
    assert_one_line_error(code, err, str(empty), "no images")
    assert_nothing_half_written(out)


def test_classes_differ_between_train_and_test(image_root, tmp_path, capsys):
    """test/ with other class names than train/: the error names test/ and both class lists."""
    for name in ("NORMAL", "VIRAL"):
        folder = image_root / "test" / name
        folder.mkdir(parents=True)
        shutil.copy(next((image_root / "train" / "NORMAL").iterdir()), folder)
    code, err, out = run_on(image_root, tmp_path, capsys)
    assert_one_line_error(code, err, str(image_root / "test"), "VIRAL", "PNEUMONIA")
    assert_nothing_half_written(out)


def add_bad_files(root: Path) -> dict[str, Path]:
    """A JPEG that is not one, a truncated JPEG and a macOS .DS_Store among the images."""
    normal = root / "train" / "NORMAL"
    garbage = normal / "IM-0900-0001.jpeg"
    garbage.write_bytes(b"this is not a JPEG at all" * 10)
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="JPEG")
    truncated = root / "train" / "PNEUMONIA" / "person900_bacteria_1.jpeg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    ds_store = normal / ".DS_Store"
    ds_store.write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    return {"garbage": garbage, "truncated": truncated, "ds_store": ds_store}


@pytest.mark.slow
def test_corrupt_jpeg_and_ds_store_are_skipped_and_listed(image_root, tmp_path, capsys):
    """on_bad_image=skip (default): the run completes; corrupt JPEGs are logged and listed in
    results.json dataset.skipped_files; .DS_Store is logged as not an image and not listed."""
    bad = add_bad_files(image_root)
    code, err, out = run_on(image_root, tmp_path, capsys)
    assert code == 0, err
    skipped = json.loads((out / "results.json").read_text())["dataset"]["skipped_files"]
    assert sorted(skipped) == sorted([str(bad["garbage"]), str(bad["truncated"])])
    assert f"skipping {bad['garbage']}: cannot read image" in err
    assert f"skipping {bad['ds_store']}: not an image file" in err
    splits = json.loads((out / "splits.json").read_text())
    used = {name for split in splits.values() for name in split["files"]}
    assert not {str(p) for p in bad.values()} & used
    assert len(used) == 48


def test_corrupt_jpeg_is_an_error_when_asked(image_root, tmp_path, capsys):
    """on_bad_image=error: the first unreadable file is named, and nothing is written."""
    bad = add_bad_files(image_root)
    code, err, out = run_on(image_root, tmp_path, capsys, "data.on_bad_image=error")
    line = assert_one_line_error(code, err, "cannot read image")
    assert str(bad["garbage"]) in line or str(bad["truncated"]) in line
    assert_nothing_half_written(out)
    assert not out.exists()


@pytest.mark.parametrize("override,needles", [
    ("student.train.epoch=3", ["student.train.epoch", "unknown key"]),
    ("student.train.epochs=abc", ["student.train.epochs", "expected int", "'abc'"]),
    ("distill.method=nosuch", ["distill.method", "'nosuch'"]),
    ("distill.alpha=1.5", ["distill.alpha"]),
    ("student.train.lr=nan", ["student.train.lr", "finite"]),
    ("distill.temperature=inf", ["distill.temperature", "finite"]),
    ("student.train.weight_decay=-1", ["student.train.weight_decay"]),
    ("threads=0", ["threads"]),
    ("profile.repeats=0", ["profile.repeats"]),
])
def test_bad_config_value_names_the_key(image_root, tmp_path, capsys, override, needles):
    """An unknown key, a wrong type or a value out of range: one line naming the key, no output."""
    code, err, out = run_on(image_root, tmp_path, capsys, override)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_bad_key_in_the_yaml_file(image_root, tmp_path, capsys):
    """The same check applies to keys written in the YAML file itself."""
    config = tiny_config(image_root, tmp_path / "out")
    config["teacher"]["learning_rate"] = 0.1
    code, err = run_cli(["run", str(write_config(tmp_path / "config.yaml", config))], capsys)
    assert_one_line_error(code, err, "teacher.learning_rate", "unknown key")
    assert not (tmp_path / "out").exists()


def test_evaluate_with_a_missing_checkpoint(image_root, tmp_path, capsys):
    """`kdistill evaluate` on a folder that is not a checkpoint names it; no results.json."""
    out = tmp_path / "results.json"
    code, err = run_cli(["evaluate", "--checkpoint", str(tmp_path / "nockpt"), "--data",
                         str(image_root / "train"), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "nockpt", "not a kdistill checkpoint")
    assert not out.exists()


def test_odd_input_size_for_reference_student(image_root, tmp_path, capsys):
    """data.input_size=17 cannot feed reference_student (MaxPool 2 then a fixed Linear): one line."""
    code, err, out = run_on(image_root, tmp_path, capsys, "data.input_size=17")
    assert_one_line_error(code, err, "input size", "17")
    assert_nothing_half_written(out)


@pytest.mark.slow
def test_supplied_splits_that_share_patients_are_flagged(tmp_path, capsys):
    """test/ reusing train/ patients (a leak a user should know about) is logged and counted."""
    root = make_image_folder(tmp_path / "data", per_class=24, splits=("train",))
    shutil.copytree(root / "train", root / "test")
    code, err, out = run_on(root, tmp_path, capsys)
    assert code == 0, err
    assert "patient keys appear in more than one split" in err
    dataset = json.loads((out / "results.json").read_text())["dataset"]
    assert dataset["patients_in_several_splits"] > 0


@pytest.mark.slow
def test_resume_with_a_different_config_is_refused(image_root, tmp_path, capsys):
    """--resume into a folder made with other distillation settings would mix two experiments."""
    code, err, out = run_on(image_root, tmp_path, capsys)
    assert code == 0, err
    before = (out / "results.json").read_text()
    code, err, _ = run_on(image_root, tmp_path, capsys, "distill.alpha=0.9", "--resume")
    assert_one_line_error(code, err, "distill", "differs")
    assert (out / "results.json").read_text() == before


def test_resume_check_ignores_where_the_cache_lives(tmp_path):
    """Moving the decoded-image cache changes no result; another input size does."""
    from kdistill.config import from_dict, dump_yaml
    from kdistill.run_folder import check_resume_config

    saved = from_dict({"data": {"dataset": "digits", "cache_dir": str(tmp_path / "a")}})
    (tmp_path / "config.yaml").write_text(dump_yaml(saved))
    check_resume_config(tmp_path, from_dict({"data": {"dataset": "digits", "cache_dir": "off"}}))
    with pytest.raises(ConfigError, match="data: differs"):
        check_resume_config(tmp_path, from_dict({"data": {"dataset": "digits", "input_size": 64,
                                                          "cache_dir": str(tmp_path / "a")}}))


def test_train_refuses_a_seeds_list(image_root, tmp_path, capsys):
    """`kdistill train` trains one model: a seeds list (read only by `kdistill run`) is an error."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out))
    code, err = run_cli(["train", str(config), "--role", "baseline", "seeds=[0,1]"], capsys)
    assert_one_line_error(code, err, "seeds", "kdistill run", "seed=K")
    assert not out.exists()


@pytest.mark.parametrize("override,needles", [
    ("teacher.model=nope", ["teacher.model", "'nope'"]),
    ("student.model_args={bogus: 1}", ["student.model_args", "bogus"]),
    ("teacher.model_args={bogus: 1}", ["teacher.model_args", "bogus"]),
])
def test_models_that_cannot_be_built_fail_before_anything_is_written(image_root, tmp_path, capsys,
                                                                     override, needles):
    """A bad model name or model argument, for either role, is found before config.yaml,
    splits.json or any checkpoint is written."""
    code, err, out = run_on(image_root, tmp_path, capsys, override)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_out_inside_a_file_is_refused_before_work(image_root, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for out in (a_file, a_file / "sub"):
        config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out))
        code, err = run_cli(["run", str(config)], capsys)
        assert_one_line_error(code, err, str(a_file), "inside a file")
    assert a_file.read_text() == "keep me"


def test_a_class_emptied_by_unreadable_files_is_an_error(image_root, tmp_path, capsys):
    """Every training image of one class unreadable: the folder check passes (files exist) but the
    training split would hold no image of that class; the run stops naming split and class."""
    for path in (image_root / "train" / "PNEUMONIA").iterdir():
        path.write_bytes(b"not an image")
    code, err, out = run_on(image_root, tmp_path, capsys)
    assert_one_line_error(code, err, "train split", "'PNEUMONIA'")
    assert_nothing_half_written(out)


def test_resume_with_a_damaged_saved_config_names_the_file(image_root, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("data: [unclosed\n")
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out))
    code, err = run_cli(["run", str(config), "--resume"], capsys)
    assert_one_line_error(code, err, str(out / "config.yaml"), "--resume")


def test_weights_that_cannot_be_downloaded_fail_before_anything_is_written(image_root, tmp_path, capsys,
                                                                           monkeypatch):
    """Offline, the chest X-ray config's ImageNet teacher (a torchvision download): one line
    naming the model, and no config.yaml, splits.json or checkpoint in the output folder."""
    def offline(url, *args, **kwargs):
        raise URLError(f"no network for {url}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached weights either
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    config = Path(__file__).resolve().parents[1] / "configs" / "chest_xray.yaml"
    out = tmp_path / "out"
    code, err = run_cli(["run", str(config), f"data.root={image_root}", f"out={out}",
                         f"data.cache_dir={tmp_path / 'cache'}"], capsys)
    assert_one_line_error(code, err, "resnet18", "ImageNet weights", "teacher.pretrained=false",
                          "teacher.weights=PATH", "configs/chest_xray_pretrained.yaml")
    assert not out.exists()
