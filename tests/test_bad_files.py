"""Malformed files given to each command: YAML configs, tuned files, results.json, model.json,
safetensors, local weights and ONNX metadata. Each one gets one line naming the file and what is
wrong, exit 2, and no traceback (docs/hostile-inputs.md lists them per command)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT, make_image_folder, tiny_config, write_config
from deploy_helpers import make_checkpoint
from kdistill.cli import main
from test_bad_input import assert_one_line_error


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


# --- YAML configs and tuned files (run, train, demo, tune, search-student) ------------------


@pytest.mark.parametrize("content,needles", [
    (b"data:\n\troot: x\n", ["not valid YAML"]),
    (b"\xff\xfe\x00 binary garbage \x81", ["not a text file"]),
    (b"- a\n- b\n", ["top level must be a mapping"]),
])
@pytest.mark.parametrize("command", ["run", "train", "tune", "search-student"])
def test_a_malformed_config_file_is_one_line_naming_it(tmp_path, capsys, command, content, needles):
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    extra = ["--role", "baseline"] if command == "train" else []
    code, err = run_cli([command, config, *extra], capsys)
    assert_one_line_error(code, err, str(config), *needles)


@pytest.mark.parametrize("content,needles", [("{unclosed", ["not valid YAML"]), ("[1, 2]", ["mapping"]),
                                             ("student:\n  train:\n    epochs: 3\n", ["student.train.epochs",
                                                                                     "not a tuned value"])])
def test_a_malformed_tuned_file_is_one_line_naming_it(image_root, tmp_path, capsys, content, needles):
    tuned = tmp_path / "best.yaml"
    tuned.write_text(content)
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, tmp_path / "out"))
    code, err = run_cli(["run", config, "--tuned", tuned], capsys)
    assert_one_line_error(code, err, str(tuned), *needles)
    assert not (tmp_path / "out").exists()


# --- results.json (report) -------------------------------------------------------------------


GOOD_ROW = {"name": "reference_student", "role": "distilled"}


@pytest.mark.parametrize("content,needles", [
    (b'{"models": [', ["not valid JSON"]),
    (b"\x89PNG\r\n\x1a\n binary", ["not valid JSON"]),
    (b"[]", ["top level is a list"]),
    (json.dumps({"models": 3}).encode(), ["'dataset'"]),
    (json.dumps({"dataset": {"classes": ["A", "B"]}, "models": 3}).encode(), ["'models'", "3"]),
    (json.dumps({"dataset": {"classes": ["A", "B"]}, "models": []}).encode(), ["'models'"]),
    (json.dumps({"dataset": {"classes": ["A", "B"]}, "models": ["x"]}).encode(), ["models[0]"]),
    (json.dumps({"dataset": {"classes": ["A", "B"]}, "models": [{"name": "a"}]}).encode(), ["models[0]", "'role'"]),
    (json.dumps({"dataset": {"classes": ["A", "B"]}, "models": [GOOD_ROW]}).encode(),
     ["not a results file kdistill can report on"]),
])
def test_report_on_a_malformed_results_file(tmp_path, capsys, content, needles):
    """Not JSON, not an object, no models, rows of the wrong shape, a row missing what the tables
    need: one line naming results.json, and no report written."""
    (tmp_path / "results.json").write_bytes(content)
    code, err = run_cli(["report", tmp_path], capsys)
    assert_one_line_error(code, err, str(tmp_path / "results.json"), *needles)
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "report.html").exists()


def test_report_on_a_folder_without_results(tmp_path, capsys):
    code, err = run_cli(["report", tmp_path], capsys)
    assert_one_line_error(code, err, "results.json: not found", "output folder of a kdistill run")


# --- model.json and model.safetensors (evaluate, predict, export, bench, run's teacher.checkpoint)


def edit_meta(checkpoint: Path, **changes) -> Path:
    meta = json.loads((checkpoint / "model.json").read_text())
    (checkpoint / "model.json").write_text(json.dumps({**meta, **changes}))
    return checkpoint


def swap_weights(checkpoint: Path, other_model: str) -> None:
    """Replace the weights with those of another architecture, keeping model.json."""
    other = make_checkpoint(checkpoint.parent / "other", name=other_model, size=16)
    shutil.copy(other / "model.safetensors", checkpoint / "model.safetensors")


BAD_META = {
    "not json": (lambda c: (c / "model.json").write_text("{{"), ["unreadable metadata"]),
    "not an object": (lambda c: (c / "model.json").write_text("[1]"), ["not a JSON object"]),
    "architecture a number": (lambda c: edit_meta(c, architecture=3), ["architecture must be"]),
    "architecture unknown": (lambda c: edit_meta(c, architecture={"name": "nope", "args": {}}),
                             ["architecture 'nope' cannot be built"]),
    "classes a string": (lambda c: edit_meta(c, classes="AB"), ["classes must be a list"]),
    "input_size a word": (lambda c: edit_meta(c, input_size="big"), ["input_size must be"]),
    "channels 2": (lambda c: edit_meta(c, channels=2), ["channels must be 1 or 3"]),
    "std with a zero": (lambda c: edit_meta(c, std=[0, 1, 1]), ["std must not hold a 0"]),
    "threshold a word": (lambda c: edit_meta(c, threshold="abc"), ["threshold must be a number"]),
    "temperature 0": (lambda c: edit_meta(c, temperature=0), ["temperature must be a positive number"]),
    "positive class unknown": (lambda c: edit_meta(c, positive_class="VIRAL"), ["positive_class", "VIRAL"]),
    "weights garbage": (lambda c: (c / "model.safetensors").write_bytes(b"x" * 64), ["unreadable weights"]),
    "weights empty": (lambda c: (c / "model.safetensors").write_bytes(b""), ["unreadable weights"]),
    "weights of another model": (lambda c: swap_weights(c, "tiny_cnn_d2"), ["weights do not match"]),
}


@pytest.mark.parametrize("case", sorted(BAD_META))
@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "bench"])
def test_a_malformed_checkpoint_is_one_line_naming_its_file(tmp_path, capsys, case, command):
    checkpoint = make_checkpoint(tmp_path / "ckpt", size=16)
    spoil, needles = BAD_META[case]
    spoil(checkpoint)
    images = make_image_folder(tmp_path / "data", per_class=2) / "train"
    argv = {"evaluate": ["evaluate", "--checkpoint", checkpoint, "--data", images],
            "predict": ["predict", "--checkpoint", checkpoint, images],
            "export": ["export", "--checkpoint", checkpoint],
            "bench": ["bench", "--checkpoint", checkpoint, "--rounds", "1"]}[command]
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, str(checkpoint), *needles)


def test_a_malformed_teacher_checkpoint_stops_run_before_anything(image_root, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "teacher", size=16)
    (checkpoint / "model.json").write_text("nope")
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml",
                          tiny_config(image_root, out, teacher={"checkpoint": str(checkpoint)}))
    code, err = run_cli(["run", config], capsys)
    assert_one_line_error(code, err, str(checkpoint / "model.json"), "unreadable metadata")
    assert not out.exists()


def test_evaluate_out_that_is_a_folder_is_refused_before_evaluating(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "ckpt", size=16)
    images = make_image_folder(tmp_path / "data", per_class=2) / "train"
    code, err = run_cli(["evaluate", "--checkpoint", checkpoint, "--data", images, "--out", tmp_path], capsys)
    assert_one_line_error(code, err, str(tmp_path), "is a folder")


# --- local teacher weights (run) ---------------------------------------------------------------


@pytest.mark.parametrize("name,write,needles", [
    ("w.pth", lambda p: p.write_bytes(b"x" * 64), ["not a tensors-only weights file"]),
    ("w.safetensors", lambda p: p.write_bytes(b"x" * 64), ["not a readable weights file"]),
    ("w.pth", lambda p: torch.save([1, 2], p), ["holds a list"]),
    ("w.pth", lambda p: torch.save({"conv1.weight": torch.zeros(1)}, p), ["does not fit this model"]),
])
def test_bad_teacher_weights_stop_the_run_before_anything(image_root, tmp_path, capsys, private_cache_dir,
                                                          name, write, needles):
    """Local weights that are not tensors, not readable, or not this model's: refused while the
    models are checked, before any image is decoded or cached."""
    weights = tmp_path / name
    write(weights)
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out, teacher={
        "model": "resnet18", "model_args": {}, "weights": str(weights)}))
    code, err = run_cli(["run", config], capsys)
    assert_one_line_error(code, err, "teacher.weights", str(weights), *needles)
    assert not out.exists() and list(private_cache_dir.iterdir()) == []


# --- ONNX metadata (predict) ---------------------------------------------------------------------


def test_onnx_metadata_of_the_wrong_type_is_one_line(tmp_path, capsys):
    """An exported file whose classes metadata was edited into a number."""
    onnx = pytest.importorskip("onnx", reason="expected skip: onnx (the export extra) is not installed")
    from kdistill.deploy.export import export_checkpoint

    checkpoint = make_checkpoint(tmp_path / "ckpt", size=16)
    export_checkpoint(checkpoint)
    path = checkpoint / "model.onnx"
    model = onnx.load(str(path))
    for entry in model.metadata_props:
        if entry.key == "classes":
            entry.value = "3"
    onnx.save(model, str(path))
    images = make_image_folder(tmp_path / "data", per_class=2) / "train"
    code, err = run_cli(["predict", "--checkpoint", path, images], capsys)
    assert_one_line_error(code, err, str(path), "classes must be a list")


# --- doctor ---------------------------------------------------------------------------------------


def test_doctor_with_a_bad_patient_regex(image_root, capsys):
    code, err = run_cli(["doctor", "--data", image_root, "--patient-regex", "("], capsys)
    assert_one_line_error(code, err, "patient_regex", "not a valid regex")


def test_doctor_on_a_file_instead_of_a_folder(tmp_path, capsys):
    a_file = tmp_path / "data.txt"
    a_file.write_text("x")
    code, err = run_cli(["doctor", "--data", a_file], capsys)
    assert_one_line_error(code, err, str(a_file), "not found")


def test_train_distilled_without_a_teacher(image_root, tmp_path, capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out))
    code, err = run_cli(["train", config, "--role", "distilled"], capsys)
    assert_one_line_error(code, err, str(out / "teacher"), "no teacher checkpoint", "--role teacher")
    assert not out.exists()


# --- the table of these inputs ------------------------------------------------------------------


def test_every_test_the_hostile_input_table_names_exists():
    """docs/hostile-inputs.md backs each row with a test: each one named must exist, and the table
    must keep at least 30 rows."""
    table = (PROJECT_ROOT / "docs" / "hostile-inputs.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`tests/" in line]
    named = re.findall(r"`tests/(test_\w+\.py)::(test_\w+)`", table)
    missing = [f"{file}::{test}" for file, test in named
               if f"def {test}(" not in (PROJECT_ROOT / "tests" / file).read_text()]
    assert len(rows) >= 30 and missing == [], missing
