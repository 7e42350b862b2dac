"""`kdistill tune`: Optuna search of alpha, temperature and lr on the validation split only, its
outputs (trials.csv, best.yaml), and `kdistill run --tuned`."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import require_or_skip  # noqa: E402

require_or_skip("optuna")  # strict under KDISTILL_REQUIRE_EXTRAS=1

import kdistill.tune as tune_module  # noqa: E402
from conftest import write_config  # noqa: E402
from kdistill.models.checkpoint import load_checkpoint  # noqa: E402
from kdistill.cli import main  # noqa: E402
from kdistill.config import load_config  # noqa: E402
from kdistill.errors import ConfigError  # noqa: E402

RANGES = {"alpha": [0.2, 0.4], "temperature": [1.5, 6.0], "lr": [0.003, 0.03]}


def digits_config(out: Path) -> dict:
    """Digits at 8x8, 20 images per class and split, tiny teacher: a trial takes about a second."""
    return {
        "data": {"dataset": "digits", "input_size": 8, "hflip": False, "max_images_per_class": 20},
        "teacher": {"model": "tiny_cnn_d2", "model_args": {"width": 4}, "pretrained": False,
                    "train": {"epochs": 2, "batch_size": 32, "lr": 0.01}},
        "student": {"model": "reference_student", "train": {"epochs": 2, "batch_size": 32, "lr": 0.01}},
        "distill": {"method": "kd", "alpha": 0.5, "temperature": 4.0},
        "tune": {**RANGES, "trials": 5},
        "profile": {"threads": 1, "repeats": 2, "throughput_batch": 4},
        "out": str(out), "progress": False, "export": False,
    }


class SpyOnTestSplit:
    """Replaces the loaded test split: records and refuses every use."""

    def __init__(self):
        self.touched: list[str] = []

    def __getattr__(self, name):
        self.touched.append(name)
        raise AssertionError(f"tune touched the test split ({name})")

    def __len__(self):
        self.touched.append("__len__")
        raise AssertionError("tune touched the test split (len)")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> dict:
    """One `kdistill tune --trials 3` with a recording spy standing in for the test split (in place
    of tune's own guard, so the check below does not rely on that guard)."""
    base = tmp_path_factory.mktemp("tune")
    config = write_config(base / "config.yaml", digits_config(base / "run"))
    spy = SpyOnTestSplit()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDISTILL_CACHE_DIR", str(base / "cache"))
        patch.setattr(tune_module, "ForbiddenTestSplit", lambda command: spy)
        code = main(["tune", str(config), "--trials", "3", "--out", str(base / "tune")])
    return {"code": code, "base": base, "config": config, "out": base / "tune", "spy": spy}


def read_trials(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_tune_writes_one_row_per_trial_within_the_ranges(tuned):
    assert tuned["code"] == 0
    rows = read_trials(tuned["out"])
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    assert all(r["state"] == "COMPLETE" and 0.0 <= float(r["value"]) <= 1.0 for r in rows), rows
    for name, (low, high) in RANGES.items():
        assert all(low <= float(r[name]) <= high for r in rows), (name, rows)
    assert len({r["alpha"] for r in rows}) == 3  # three different proposals, not one repeated
    assert not list(tuned["out"].glob("*.db")) and not list(tuned["out"].glob("*.pkl"))


@pytest.mark.slow
def test_best_yaml_holds_the_best_trial(tuned):
    rows = read_trials(tuned["out"])
    best_row = max(rows, key=lambda r: float(r["value"]))  # balanced accuracy: higher is better
    text = (tuned["out"] / "best.yaml").read_text()
    best = yaml.safe_load(text)
    assert best == {"distill": {"alpha": float(best_row["alpha"]), "temperature": float(best_row["temperature"])},
                    "student": {"train": {"lr": float(best_row["lr"])}}}
    assert f"trial {best_row['number']} of 3" in text and f"{float(best_row['value']):.4f}" in text


@pytest.mark.slow
def test_tune_never_touches_the_test_split(tuned):
    assert tuned["code"] == 0
    assert tuned["spy"].touched == []


@pytest.mark.slow
def test_a_trial_that_reads_the_test_split_stops_the_search(tmp_path, monkeypatch):
    """The guard itself: an objective that reaches for the test split fails the whole search
    (not one trial quietly), and no best.yaml is written."""
    config = write_config(tmp_path / "config.yaml", digits_config(tmp_path / "run"))
    real_train_student = tune_module.train_student

    def peeking_train_student(config, data, *args, **kwargs):
        len(data.test)
        return real_train_student(config, data, *args, **kwargs)

    monkeypatch.setattr(tune_module, "train_student", peeking_train_student)
    with pytest.raises(RuntimeError, match="test split"):
        main(["tune", str(config), "--trials", "1", "--out", str(tmp_path / "tune")])
    assert not (tmp_path / "tune" / "best.yaml").exists()


@pytest.mark.slow
def test_seeded_search_proposes_the_same_trials_again(tuned, tmp_path):
    out = tmp_path / "again"
    assert main(["tune", str(tuned["config"]), "--trials", "2", "--out", str(out)]) == 0
    again, first = read_trials(out), read_trials(tuned["out"])[:2]
    for name in RANGES:
        assert [r[name] for r in again] == [r[name] for r in first], name


@pytest.mark.slow
def test_run_with_tuned_uses_and_records_the_values(tuned):
    best_path = tuned["out"] / "best.yaml"
    best = yaml.safe_load(best_path.read_text())
    out = tuned["base"] / "run_tuned"
    code = main(["run", str(tuned["config"]), "--tuned", str(best_path), "--out", str(out),
                 f"teacher.checkpoint={tuned['out'] / 'teacher'}"])
    assert code == 0
    _, meta = load_checkpoint(out / "distilled")
    assert meta["training"]["alpha"] == best["distill"]["alpha"]
    assert meta["training"]["temperature"] == best["distill"]["temperature"]
    assert meta["training"]["lr"] == best["student"]["train"]["lr"]
    results = json.loads((out / "results.json").read_text())
    assert results["tuned"] == {"file": str(best_path), "values": {
        "distill.alpha": best["distill"]["alpha"], "distill.temperature": best["distill"]["temperature"],
        "student.train.lr": best["student"]["train"]["lr"]}}
    assert yaml.safe_load((out / "config.yaml").read_text())["tuned"] == str(best_path)
    assert "Tuned on the validation split" in (out / "report.md").read_text()


def test_command_line_overrides_win_over_the_tuned_file(tmp_path):
    best = tmp_path / "best.yaml"
    best.write_text("distill: {alpha: 0.3, temperature: 2.5}\nstudent: {train: {lr: 0.002}}\n")
    config = load_config(None, ["data.dataset=digits", f"tuned={best}", "distill.alpha=0.7"])
    assert (config.distill.alpha, config.distill.temperature, config.student.train.lr) == (0.7, 2.5, 0.002)


def test_tuned_file_with_other_keys_is_refused(tmp_path):
    best = tmp_path / "best.yaml"
    best.write_text("student: {train: {epochs: 50}}\n")
    with pytest.raises(ConfigError, match=r"best\.yaml: student\.train\.epochs is not a tuned value"):
        load_config(None, ["data.dataset=digits", f"tuned={best}"])


@pytest.mark.parametrize("override, message", [
    ("tune.alpha=[0.9,0.1]", "tune.alpha"), ("tune.temperature=[0,4]", "tune.temperature"),
    ("tune.trials=0", "tune.trials")])
def test_bad_search_ranges_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.dataset=digits", override])


def test_missing_optuna_is_one_line_with_the_pip_command(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path / "config.yaml", digits_config(tmp_path / "run"))
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` raise ImportError
    assert main(["tune", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert "pip install" in error and "optuna" in error.lower() and len(error.splitlines()) == 1


def test_article_recipe_cannot_be_tuned(tmp_path, capsys):
    config = write_config(tmp_path / "config.yaml", {**digits_config(tmp_path / "run"),
                                                     "distill": {"method": "article"}})
    assert main(["tune", str(config)]) == 2
    assert "distill.method" in capsys.readouterr().err
