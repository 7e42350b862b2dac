"""Never lose a user's files: a run records what it writes (kdistill-manifest.json) and removes only
that; files it did not write, under the names it needs, stop it (unless --overwrite); every check
runs before the first write, so a refused run leaves an earlier finished run byte-identical and
caches no decoded image; a run that fails midway leaves the folder marked incomplete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import make_image_folder, tiny_config, write_config
from kdistill import pipeline
from kdistill.cli import main
from kdistill.config import from_dict
from kdistill.output_folder import INCOMPLETE, MANIFEST
from test_bad_input import assert_one_line_error


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
            for path in sorted(folder.rglob("*"))}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def fail_when_students_train(monkeypatch) -> None:
    """A later run that fails midway: an error once the teacher has trained."""
    def broken(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(pipeline, "train_student", broken)


@pytest.fixture(scope="module")
def finished_template(tmp_path_factory) -> tuple[Path, Path]:
    """One finished tiny run for the module: (its data folder, its output folder). Each test
    works on a copy (``finish_a_run``)."""
    base = tmp_path_factory.mktemp("finished")
    root = make_image_folder(base / "data")
    out = base / "out"
    pipeline.run(from_dict(tiny_config(root, out, export=False)))
    assert (out / "results.json").is_file() and not (out / INCOMPLETE).exists()
    return root, out


def finish_a_run(template: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A finished run of its own for one test: (config file, output folder), a copy of the
    module's run whose config names the copy."""
    root, finished = template
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return write_config(tmp_path / "config.yaml", tiny_config(root, out, export=False)), out


def test_users_files_under_run_names_are_refused_before_anything(image_root, tmp_path, monkeypatch, capsys,
                                                                 private_cache_dir):
    """`run --out .` in a folder holding the user's own config.yaml and teacher/notes.txt: one line
    naming both, exit 2, the folder byte-identical, and no decoded image cached."""
    folder = tmp_path / "project"
    (folder / "teacher").mkdir(parents=True)
    (folder / "config.yaml").write_text("my own settings\n")
    (folder / "teacher" / "notes.txt").write_text("my notes\n")
    config = write_config(tmp_path / "my.yaml", tiny_config(image_root, tmp_path / "unused"))
    before = snapshot(folder)
    monkeypatch.chdir(folder)

    code, err = run_cli(["run", str(config), "--out", "."], capsys)

    line = assert_one_line_error(code, err, "config.yaml", "teacher/", "--overwrite")
    assert "no kdistill command recorded writing" in line
    assert snapshot(folder) == before
    assert list(private_cache_dir.iterdir()) == []


@pytest.mark.slow
def test_overwrite_replaces_only_the_names_the_run_writes(image_root, tmp_path, capsys):
    """--overwrite: the user's config.yaml and teacher/ are replaced (and said so), the user's other
    file stays, and the run finishes."""
    out = tmp_path / "out"
    (out / "teacher").mkdir(parents=True)
    (out / "config.yaml").write_text("my own settings\n")
    (out / "teacher" / "notes.txt").write_text("my notes\n")
    (out / "mine.txt").write_text("keep me\n")
    config = write_config(tmp_path / "my.yaml", tiny_config(image_root, out, export=False))

    code, err = run_cli(["run", str(config), "--overwrite"], capsys)

    assert code == 0, err
    assert "--overwrite: replacing config.yaml, teacher/" in err
    assert not (out / "teacher" / "notes.txt").exists() and (out / "teacher" / "model.json").is_file()
    assert (out / "mine.txt").read_text() == "keep me\n"


def test_a_file_inside_a_folder_the_run_needs_is_refused(image_root, tmp_path, capsys):
    """A file where the run needs a folder (seed0, for seeds [0]) stops it naming that path."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "seed0").write_text("not a folder\n")
    config = write_config(tmp_path / "my.yaml", tiny_config(image_root, out, seeds=[0]))
    code, err = run_cli(["run", str(config)], capsys)
    assert_one_line_error(code, err, "seed0/baseline")
    assert (out / "seed0").read_text() == "not a folder\n"


@pytest.mark.parametrize("override,needles", [
    (["out="], ["out: ''", "empty"]),
    (["out=   "], ["out:", "empty"]),
    (["--out", ""], ["out: ''", "empty"]),
])
def test_an_empty_out_is_refused(image_root, tmp_path, monkeypatch, capsys, override, needles):
    """An empty or blank output folder would write the run into the current folder."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "my.yaml", tiny_config(image_root, tmp_path / "out"))
    before = sorted(path.name for path in tmp_path.iterdir())
    code, err = run_cli(["run", str(config), *override], capsys)
    assert_one_line_error(code, err, *needles)
    assert sorted(path.name for path in tmp_path.iterdir()) == before


@pytest.mark.parametrize("argv", [["demo", "--out", ""], ["tune", "CONFIG", "--out", " "],
                                  ["search-student", "CONFIG", "--out", ""]])
def test_an_empty_out_is_refused_by_every_command(image_root, tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "my.yaml", tiny_config(image_root, tmp_path / "out"))
    argv = [str(config) if arg == "CONFIG" else arg for arg in argv]
    before = sorted(path.name for path in tmp_path.iterdir())
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "empty")
    assert sorted(path.name for path in tmp_path.iterdir()) == before


@pytest.mark.slow
@pytest.mark.parametrize("overrides,needles", [
    (["device=cuda"], ["device: cuda"]),
    (["precision=fp16", "device=cpu"], ["precision: fp16"]),
    (["teacher.model=nope"], ["teacher.model", "'nope'"]),
    (["student.model_args={bogus: 1}"], ["student.model_args", "bogus"]),
    (["student.budget.params=10"], ["budget", "10"]),
    (["teacher.model=resnet18", "teacher.model_args={}", "teacher.weights=/no/such/weights.pth"],
     ["teacher.weights", "not found"]),
    (["data.labeled_fraction=0.5", "distill.method=dkd"], ["distill.method", "dkd"]),
    (["data.positive_class=VIRAL"], ["data.positive_class", "VIRAL"]),
    (["--resume", "distill.alpha=0.9"], ["distill", "differs"]),
])
def test_a_refused_run_leaves_the_finished_run_byte_identical_and_caches_nothing(
        finished_template, tmp_path, capsys, overrides, needles):
    """Each bad setting is refused before the first write: the earlier finished run (13 files)
    stays byte for byte, and the refused run's decoded-image cache folder is never created."""
    config, out = finish_a_run(finished_template, tmp_path)
    before = snapshot(out)
    cache = tmp_path / "refused_cache"
    code, err = run_cli(["run", str(config), f"data.cache_dir={cache}", *overrides], capsys)
    assert_one_line_error(code, err, *needles)
    assert snapshot(out) == before
    assert not cache.exists()


@pytest.mark.slow
def test_a_class_emptied_by_unreadable_files_caches_nothing(finished_template, tmp_path, capsys):
    """A check that needs decoded images (every split holds every class) still runs before the
    decoded images are cached, and before the earlier run is touched."""
    config, out = finish_a_run(finished_template, tmp_path)
    root = make_image_folder(tmp_path / "broken")
    for path in (root / "train" / "PNEUMONIA").iterdir():
        path.write_bytes(b"not an image")
    before = snapshot(out)
    cache = tmp_path / "refused_cache"
    code, err = run_cli(["run", str(config), f"data.root={root}", f"data.cache_dir={cache}"], capsys)
    assert_one_line_error(code, err, "train split", "'PNEUMONIA'")
    assert snapshot(out) == before
    assert not cache.exists()


@pytest.mark.slow
def test_a_later_run_that_fails_midway_leaves_the_folder_marked_incomplete(finished_template, tmp_path,
                                                                           monkeypatch, capsys):
    """The earlier run's results are gone before the new run writes (never a mix of the two), and
    the folder says plainly that it holds an unfinished run: INCOMPLETE.txt, no results.json, and
    `kdistill report` says so."""
    config, out = finish_a_run(finished_template, tmp_path)
    fail_when_students_train(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated"):
        main(["run", str(config), "teacher.train.epochs=1"])
    assert (out / INCOMPLETE).is_file() and not (out / "results.json").exists()
    assert not (out / "report.md").exists() and not (out / "baseline").exists()
    code, err = run_cli(["report", str(out)], capsys)
    assert_one_line_error(code, err, "results.json", "did not finish", "--resume")


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_resume_with_nothing_to_resume_says_so(image_root, tmp_path, capsys, make):
    """--resume on a missing or empty folder: one line, exit 2, and no fresh run started."""
    out = tmp_path / "out"
    if make == "empty":
        out.mkdir()
    config = write_config(tmp_path / "my.yaml", tiny_config(image_root, out))
    code, err = run_cli(["run", str(config), "--resume"], capsys)
    assert_one_line_error(code, err, str(out), "nothing to resume", "without --resume")
    assert list(out.iterdir()) == [] if make == "empty" else not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("content,needles", [
    ("{not json", ["unreadable"]),
    (json.dumps({"written_by": "kdistill", "paths": ["../outside.txt"]}), ["not a kdistill manifest"]),
    (json.dumps({"written_by": "kdistill", "paths": ["/etc/passwd"]}), ["not a kdistill manifest"]),
    (json.dumps(["config.yaml"]), ["not a kdistill manifest"]),
])
def test_a_manifest_kdistill_cannot_trust_stops_the_run(finished_template, tmp_path, capsys, content, needles):
    """A damaged or tampered manifest is never a reason to guess or to remove anything, let alone
    outside the folder."""
    config, out = finish_a_run(finished_template, tmp_path)
    (tmp_path / "outside.txt").write_text("keep me\n")
    (out / MANIFEST).write_text(content)
    before = snapshot(out)
    code, err = run_cli(["run", str(config)], capsys)
    assert_one_line_error(code, err, MANIFEST, *needles)
    assert snapshot(out) == before and (tmp_path / "outside.txt").is_file()


@pytest.mark.slow
def test_a_rerun_replaces_a_finished_run_and_records_every_file(finished_template, tmp_path, capsys):
    """A second run into a finished run's folder replaces it, and its manifest names (itself or a
    folder above) every path the run wrote, so a later run can remove them all."""
    config, out = finish_a_run(finished_template, tmp_path)
    before = (out / "results.json").read_bytes()
    code, err = run_cli(["run", str(config), "seed=1"], capsys)
    assert code == 0, err
    assert (out / "results.json").read_bytes() != before
    recorded = set(json.loads((out / MANIFEST).read_text())["paths"])
    unrecorded = [path for path in out.rglob("*") if path.name != MANIFEST
                  and not any(str(part) in recorded for part in _prefixes(path.relative_to(out)))]
    assert unrecorded == []


@pytest.mark.slow
def test_a_multi_seed_comparison_records_every_file_it_writes(image_root, tmp_path, capsys):
    """Seeds and a method comparison add seed<k>/ and distilled-<method>/ folders: all recorded;
    a later single-seed run removes them, and leaves a user's file inside seed0/."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "my.yaml", tiny_config(image_root, out, seeds=[0, 1],
                                                            distill={"methods": ["kd", "ls"]}))
    assert main(["run", str(config)]) == 0
    recorded = set(json.loads((out / MANIFEST).read_text())["paths"])
    assert {"seed0/distilled-kd", "seed1/distilled-ls", "seed1/resume"} <= recorded
    unrecorded = [path for path in out.rglob("*") if path.name != MANIFEST and not path.is_dir()
                  and not any(str(part) in recorded for part in _prefixes(path.relative_to(out)))]
    assert unrecorded == []
    (out / "seed0" / "mine.txt").write_text("keep me\n")
    assert main(["run", str(config), "seeds=null", "distill.methods=null"]) == 0
    assert sorted(path.name for path in out.glob("seed*")) == ["seed0"]
    assert [path.name for path in (out / "seed0").iterdir()] == ["mine.txt"]


def _prefixes(relative: Path) -> list[Path]:
    """``a/b/c`` -> ``a``, ``a/b``, ``a/b/c`` (as posix paths)."""
    parts = relative.parts
    return [Path(*parts[:i]).as_posix() for i in range(1, len(parts) + 1)]


def test_tune_refuses_a_folder_holding_the_users_files(image_root, tmp_path, capsys):
    """`kdistill tune` writes trials.csv and best.yaml: a user's best.yaml there stops it before
    anything is decoded or trained."""
    pytest.importorskip("optuna", reason="expected skip: optuna (the tune extra) is not installed")
    out = tmp_path / "tune"
    out.mkdir()
    (out / "best.yaml").write_text("mine\n")
    config = write_config(tmp_path / "my.yaml", tiny_config(image_root, tmp_path / "run"))
    code, err = run_cli(["tune", str(config), "--out", str(out), "--trials", "1"], capsys)
    assert_one_line_error(code, err, "best.yaml", "--overwrite")
    assert [path.name for path in out.iterdir()] == ["best.yaml"]


def test_search_refuses_a_folder_holding_the_users_files(image_root, tmp_path, capsys):
    out = tmp_path / "search"
    (out / "best").mkdir(parents=True)
    (out / "best" / "notes.txt").write_text("mine\n")
    config = write_config(tmp_path / "my.yaml", tiny_config(image_root, tmp_path / "run"))
    code, err = run_cli(["search-student", str(config), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "best/", "--overwrite")
    assert (out / "best" / "notes.txt").read_text() == "mine\n"


def test_train_role_refuses_the_users_folder_of_that_name(image_root, tmp_path, capsys):
    """`kdistill train --role baseline` into a folder whose baseline/ is the user's."""
    out = tmp_path / "out"
    (out / "baseline").mkdir(parents=True)
    (out / "baseline" / "notes.txt").write_text("mine\n")
    config = write_config(tmp_path / "my.yaml", tiny_config(image_root, out))
    code, err = run_cli(["train", str(config), "--role", "baseline"], capsys)
    assert_one_line_error(code, err, "baseline/")
    assert sorted(path.name for path in out.iterdir()) == ["baseline"]


@pytest.mark.slow
def test_resume_adopts_a_folder_without_manifest_only_with_overwrite(finished_template, tmp_path, capsys):
    """A run folder from before manifests (no kdistill-manifest.json): --resume refuses to take its
    files as kdistill's on a guess; with --overwrite it adopts them and resumes, retraining nothing."""
    config, out = finish_a_run(finished_template, tmp_path)
    (out / MANIFEST).unlink()
    weights = (out / "teacher" / "model.safetensors").read_bytes()
    code, err = run_cli(["run", str(config), "--resume"], capsys)
    assert_one_line_error(code, err, "config.yaml", "--overwrite")
    code, err = run_cli(["run", str(config), "--resume", "--overwrite"], capsys)
    assert code == 0, err
    assert "--overwrite: adopting" in err and "teacher: already trained" in err
    assert (out / "teacher" / "model.safetensors").read_bytes() == weights
    assert "teacher" in json.loads((out / MANIFEST).read_text())["paths"]


@pytest.mark.slow
def test_a_users_copy_of_a_checkpoint_under_another_name_stays(finished_template, tmp_path, capsys):
    """A user's copy of a checkpoint (teacher-mine/) is not recorded: a rerun leaves it alone."""
    config, out = finish_a_run(finished_template, tmp_path)
    shutil.copytree(out / "teacher", out / "teacher-mine")
    code, err = run_cli(["run", str(config), "seed=1"], capsys)
    assert code == 0, err
    assert (out / "teacher-mine" / "model.json").is_file() and "teacher-mine" not in err
