"""A run without --resume into a folder holding an earlier run: what the earlier run recorded in its
manifest goes before the new run writes anything, so a run cut short never leaves old and new
outputs side by side (and the folder is marked incomplete); the user's other files stay.
`kdistill train` replaces only its own model (and the stale summaries)."""

from __future__ import annotations

import json

import pytest

from conftest import leftover_temp_files, tiny_config, write_config
from kdistill import pipeline
from kdistill import output_folder, run_folder
from kdistill.output_folder import INCOMPLETE, MANIFEST
from kdistill.cli import main
from kdistill.config import from_dict
from kdistill.models.checkpoint import read_meta

USER_FILE = "my notes.txt"


def interrupt_students(monkeypatch) -> None:
    """Ctrl-C as the first student starts, after the teacher has trained."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_student", interrupted)


@pytest.mark.slow
def test_failed_rerun_leaves_no_file_of_the_earlier_run(image_root, tmp_path, monkeypatch, capsys):
    """Run 1 completes; run 2 (teacher 1 epoch instead of 2) is interrupted after its teacher: the
    folder then holds run 2's files only, marked incomplete, beside the user's own file and folder."""
    out = tmp_path / "out"
    first = tiny_config(image_root, out, export=False)
    assert main(["run", str(write_config(tmp_path / "first.yaml", first))]) == 0
    assert (out / "results.json").is_file() and (out / "baseline" / "model.json").is_file()
    assert not (out / INCOMPLETE).exists()  # a finished run is not marked
    (out / USER_FILE).write_text("keep me")
    (out / "plots").mkdir()
    (out / "plots" / "mine.png").write_bytes(b"png")
    capsys.readouterr()

    interrupt_students(monkeypatch)
    second = tiny_config(image_root, out, export=False,
                         teacher={"train": {"epochs": 1, "batch_size": 8, "lr": 0.01}})
    assert main(["run", str(write_config(tmp_path / "second.yaml", second))]) == 130

    left = sorted(path.name for path in out.iterdir())
    assert left == sorted(["config.yaml", "splits.json", "teacher", "resume", USER_FILE, "plots",
                           MANIFEST, INCOMPLETE]), left
    assert list((out / "resume").iterdir()) == []  # run 2's, emptied when its teacher finished
    assert read_meta(out / "teacher")["training"]["epochs"] == 1  # run 2's teacher, not run 1's
    assert "epochs: 1" in (out / "config.yaml").read_text()
    assert (out / USER_FILE).read_text() == "keep me" and (out / "plots" / "mine.png").is_file()
    removal = next(line for line in capsys.readouterr().err.splitlines() if "removed the earlier" in line)
    assert "results.json" in removal and "baseline/" in removal
    assert USER_FILE not in removal and "plots" not in removal
    assert main(["report", str(out)]) == 2  # the folder says plainly that its run did not finish
    assert f"did not finish ({INCOMPLETE})" in capsys.readouterr().err


def test_clearing_takes_what_the_manifest_records_and_nothing_else(tmp_path, image_root):
    """Recorded seed folders of an earlier run with other seeds, and temporary names of its
    interrupted atomic writes, go; the user's files beside them (even inside a seed folder) stay,
    and so does a recorded teacher this run reads."""
    out = tmp_path / "out"
    for folder in ("seed0/baseline", "seed0/resume/distilled", "seed1/distilled", "seed7/mine", "teacher"):
        (out / folder).mkdir(parents=True)
    for name in ("results.json", ".results.json.x1y2.tmp", "notes.md", "seed1/.distilled.ab.tmp",
                 "seed0/mine.txt", "seed1/.distilled.old"):
        (out / name).write_text("{}")
    recorded = ["results.json", "seed0/baseline", "seed0/resume", "seed1/distilled", "teacher"]
    (out / MANIFEST).write_text(json.dumps({"written_by": "kdistill", "paths": recorded}))
    config = from_dict(tiny_config(image_root, out, teacher={"checkpoint": str(out / "teacher")}))

    plan = output_folder.plan_output(out, run_folder.run_targets(config), inputs=run_folder.input_paths(config))
    plan.open()

    assert sorted(path.name for path in out.iterdir()) == [INCOMPLETE, MANIFEST, "notes.md", "seed0", "seed7",
                                                           "teacher"]
    assert sorted(path.name for path in (out / "seed0").iterdir()) == ["mine.txt"]
    assert (out / "seed7" / "mine").is_dir() and leftover_temp_files(out) == []
    manifest = json.loads((out / MANIFEST).read_text())["paths"]
    assert "teacher" in manifest and "seed1/distilled" not in manifest and "baseline" in manifest


def test_resume_keeps_the_earlier_files(image_root, tmp_path, monkeypatch, caplog):
    """--resume clears nothing: the interrupted run's teacher is reused, not retrained, and the
    user's file stays."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out, export=False))
    interrupt_students(monkeypatch)
    assert main(["run", str(config)]) == 130  # trains the teacher, stops at the students
    teacher_written = (out / "teacher" / "model.safetensors").stat().st_mtime_ns
    (out / USER_FILE).write_text("keep me")
    caplog.clear()
    assert main(["run", str(config), "--resume"]) == 130
    assert (out / "teacher" / "model.safetensors").stat().st_mtime_ns == teacher_written
    assert (out / USER_FILE).is_file() and "removed the earlier run" not in caplog.text


@pytest.mark.slow
def test_train_replaces_its_own_model_and_keeps_the_teacher(image_root, tmp_path, monkeypatch):
    """`kdistill train --role distilled` into a finished run: the earlier distilled student and the
    summaries that described it go, the teacher it distils from and the baseline stay, and so does
    the user's own file."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out, export=False))
    assert main(["run", str(config)]) == 0
    teacher_weights = (out / "teacher" / "model.safetensors").read_bytes()
    (out / USER_FILE).write_text("keep me")
    interrupt_students(monkeypatch)

    assert main(["train", str(config), "--role", "distilled"]) == 130

    assert (out / "teacher" / "model.safetensors").read_bytes() == teacher_weights
    assert not (out / "distilled").exists() and not (out / "results.json").exists()
    assert not (out / "report.md").exists() and (out / INCOMPLETE).is_file()
    assert (out / "baseline" / "model.json").is_file() and (out / USER_FILE).is_file()


def test_a_run_into_an_empty_or_new_folder_removes_nothing(image_root, tmp_path, caplog):
    """Nothing to clear: no error and no log line, for a missing and for an empty folder; the
    folder then holds the manifest and the marker only."""
    config = from_dict(tiny_config(image_root, tmp_path / "out"))
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    for out in (missing, empty):
        output_folder.plan_output(out, run_folder.run_targets(config)).open()
        assert sorted(path.name for path in out.iterdir()) == [INCOMPLETE, MANIFEST]
    assert "removed" not in caplog.text


def test_train_leaves_no_empty_resume_folder(image_root, tmp_path):
    """`kdistill train` removes its resume state once the model is done, and the emptied
    resume/ folder with it."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out))
    for role in ("teacher", "baseline"):
        assert main(["train", str(config), "--role", role]) == 0
        assert (out / role / "model.json").is_file() and not (out / "resume").exists(), role


def test_train_keeps_a_resume_folder_holding_another_models_state(image_root, tmp_path):
    """Another model's unfinished state stays resumable after this one is trained."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out))
    (out / "resume" / "distilled").mkdir(parents=True)
    (out / "resume" / "distilled" / "state.json").write_text("{}")
    assert main(["train", str(config), "--role", "teacher"]) == 0
    assert (out / "resume" / "distilled" / "state.json").is_file()
    assert not (out / "resume" / "teacher").exists()
