"""A run without --resume into a folder holding an earlier run: the earlier run's files go before
the new run writes anything, so a run cut short never leaves old and new outputs side by side;
the user's other files stay. `kdistill train` replaces only its own model (and the stale summaries)."""

from __future__ import annotations

import pytest

from conftest import leftover_temp_files, tiny_config, write_config
from kdistill import pipeline
from kdistill.engine import run_folder
from kdistill.cli import main
from kdistill.config import from_dict
from kdistill.models.checkpoint import read_meta

USER_FILE = "my notes.txt"


def interrupt_students(monkeypatch) -> None:
    """Ctrl-C as the first student starts, after the teacher has trained."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_student", interrupted)


def test_failed_rerun_leaves_no_file_of_the_earlier_run(image_root, tmp_path, monkeypatch, capsys):
    """Run 1 completes; run 2 (teacher 1 epoch instead of 2) is interrupted after its teacher: the
    folder then holds run 2's files only, beside the user's own file and folder."""
    out = tmp_path / "out"
    first = tiny_config(image_root, out, export=False)
    assert main(["run", str(write_config(tmp_path / "first.yaml", first))]) == 0
    assert (out / "results.json").is_file() and (out / "baseline" / "model.json").is_file()
    (out / USER_FILE).write_text("keep me")
    (out / "plots").mkdir()
    (out / "plots" / "mine.png").write_bytes(b"png")
    capsys.readouterr()

    interrupt_students(monkeypatch)
    second = tiny_config(image_root, out, export=False,
                         teacher={"train": {"epochs": 1, "batch_size": 8, "lr": 0.01}})
    assert main(["run", str(write_config(tmp_path / "second.yaml", second))]) == 130

    left = sorted(path.name for path in out.iterdir())
    assert left == sorted(["config.yaml", "splits.json", "teacher", "resume", USER_FILE, "plots"]), left
    assert list((out / "resume").iterdir()) == []  # run 2's, emptied when its teacher finished
    assert read_meta(out / "teacher")["training"]["epochs"] == 1  # run 2's teacher, not run 1's
    assert "epochs: 1" in (out / "config.yaml").read_text()
    assert (out / USER_FILE).read_text() == "keep me" and (out / "plots" / "mine.png").is_file()
    removal = next(line for line in capsys.readouterr().err.splitlines() if "removed the earlier run's" in line)
    assert "results.json" in removal and "baseline/" in removal and f"left {USER_FILE}, plots/" in removal


def test_clearing_takes_seed_folders_and_leftovers_but_not_the_users_files(tmp_path, image_root):
    """Seed folders of an earlier run with other seeds and temporary names of interrupted atomic
    writes go; a seed-named folder holding the user's files and an input of this run stay."""
    out = tmp_path / "out"
    for folder in ("seed0/baseline", "seed0/resume/distilled", "seed1/distilled", "seed7/mine", "teacher"):
        (out / folder).mkdir(parents=True)
    for name in ("results.json", ".results.json.x1y2.tmp", ".baseline.old", "notes.md", "seed1/.distilled.ab.tmp"):
        (out / name).write_text("{}")
    config = from_dict(tiny_config(image_root, out, teacher={"checkpoint": str(out / "teacher")}))

    run_folder.clear_earlier_run(out, config, run_folder.earlier_run_outputs(out))

    assert sorted(path.name for path in out.iterdir()) == ["notes.md", "seed7", "teacher"]
    assert (out / "seed7" / "mine").is_dir() and leftover_temp_files(out) == []


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


def test_train_replaces_its_own_model_and_keeps_the_teacher(image_root, tmp_path, monkeypatch):
    """`kdistill train --role distilled` again: the earlier distilled student and the summaries
    that described it go, the teacher it distils from stays."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out))
    assert main(["train", str(config), "--role", "teacher"]) == 0
    teacher_weights = (out / "teacher" / "model.safetensors").read_bytes()
    for name in ("distilled", "baseline"):
        (out / name).mkdir()
        (out / name / "model.json").write_text("{}")
    (out / "results.json").write_text("{}")
    (out / USER_FILE).write_text("keep me")
    interrupt_students(monkeypatch)

    assert main(["train", str(config), "--role", "distilled"]) == 130

    assert (out / "teacher" / "model.safetensors").read_bytes() == teacher_weights
    assert not (out / "distilled").exists() and not (out / "results.json").exists()
    assert (out / "baseline" / "model.json").is_file() and (out / USER_FILE).is_file()


def test_a_run_into_an_empty_or_new_folder_removes_nothing(image_root, tmp_path, caplog):
    """Nothing to clear: no error and no log line, for a missing and for an empty folder."""
    config = from_dict(tiny_config(image_root, tmp_path / "out"))
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    for out in (missing, empty):
        run_folder.clear_earlier_run(out, config, run_folder.earlier_run_outputs(out))
    assert not missing.exists() and list(empty.iterdir()) == []
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
