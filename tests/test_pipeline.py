"""End to end through the command line: `kdistill run`, `evaluate`, `train` and `demo`."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from conftest import leftover_temp_files, make_image_folder, tiny_config, write_config
from kdistill.models.checkpoint import load_checkpoint
from kdistill.cli import main
from kdistill.config import load_config, to_dict

ROW_KEYS = {"name", "role", "params", "macs", "accuracy", "balanced_accuracy", "sensitivity",
            "specificity", "auc", "ece", "threshold", "latency_ms_batch1", "throughput_img_s",
            "checkpoint", "id", "seed", "threshold_rule", "at_0.5", "temperature", "ece_uncalibrated",
            "ci", "history"}
ROLES = ["teacher", "baseline", "distilled"]
TABLE_HEADER = "| model | role | accuracy % |"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> dict:
    """One `kdistill run` on 48 generated 16x16 images: ResNet-18 teacher (from scratch),
    reference student, 2 epochs each. Shared by the tests of this module (about 8 s)."""
    base = tmp_path_factory.mktemp("pipeline")
    root = make_image_folder(base / "data")
    config = tiny_config(root, base / "unused", teacher={"model": "resnet18", "model_args": {}})
    config_path = write_config(base / "config.yaml", config)
    out = base / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["run", str(config_path), "--out", str(out)])
    return {"code": code, "out": out, "root": root, "config": config_path,
            "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def read_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_run_prints_its_table_on_stdout_and_logs_on_stderr(run_dir):
    """The comparison table is the command's result (stdout); the progress of the run is log (stderr)."""
    assert run_dir["code"] == 0
    assert TABLE_HEADER in run_dir["stdout"] and TABLE_HEADER not in run_dir["stderr"]
    assert "teacher" in run_dir["stderr"] and f"written to {run_dir['out']}/" in run_dir["stderr"]
    assert "written to" not in run_dir["stdout"]


@pytest.mark.slow
def test_run_writes_results_with_every_contract_key(run_dir):
    """results.json: three models with roles teacher/baseline/distilled and all the contract keys."""
    assert run_dir["code"] == 0
    results = read_results(run_dir["out"])
    assert [row["role"] for row in results["models"]] == ROLES
    for row in results["models"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert 0.0 <= row["accuracy"] <= 1.0 and row["params"] > 0 and row["macs"] > 0
        assert row["latency_ms_batch1"] > 0 and row["throughput_img_s"] > 0
        # Speed from the bench code: the fastest runtime tried, named, with every runtime's latency.
        assert row["latency_ms_batch1"] == min(row["latency_ms_by_runtime"].values())
        assert row["latency_ms_by_runtime"][row["runtime"]] == row["latency_ms_batch1"]
        assert 0.0 <= row["threshold"] <= 1.0 and row["threshold_rule"] == "balanced_accuracy"
        assert row["temperature"] > 0 and len(row["history"]) == 2  # 2 epochs
    teacher, baseline, distilled = results["models"]
    # One architecture is timed once (side by side with the teacher): both students share its figures.
    assert baseline["latency_ms_batch1"] == distilled["latency_ms_batch1"]
    assert [row["id"] for row in results["models"]] == ["teacher", "baseline-seed0", "distilled-seed0"]
    assert teacher["name"] == "resnet18" and teacher["params"] > 100 * baseline["params"]
    assert baseline["params"] == distilled["params"]
    assert results["dataset"]["positive_class"] == "PNEUMONIA"
    assert results["dataset"]["skipped_files"] == []
    assert results["doctor"]["duplicate_groups"] == [] and results["doctor"]["leaking_groups"] == {}


@pytest.mark.slow
def test_report_has_the_comparison_table(run_dir):
    """report.md holds the table with one row per model, labelled by role."""
    report = (run_dir["out"] / "report.md").read_text()
    assert TABLE_HEADER in report
    for label in ("| teacher |", "| student alone |", "| student distilled |"):
        assert label in report
    table_rows = [line for line in report.splitlines() if line.startswith("| resnet18 ")
                  or line.startswith("| reference_student ")]
    assert len(table_rows) == 3


@pytest.mark.slow
def test_resolved_config_is_saved(run_dir):
    """config.yaml in the output folder is the resolved config: it reloads to the same values."""
    saved = load_config(run_dir["out"] / "config.yaml")
    given = load_config(run_dir["config"], [f"out={run_dir['out']}"])
    assert to_dict(saved) == to_dict(given)
    assert saved.teacher.model == "resnet18" and saved.data.input_size == 16


@pytest.mark.slow
def test_checkpoints_are_self_describing_directories(run_dir):
    """Each model is a directory of model.safetensors + model.json that loads on its own."""
    results = read_results(run_dir["out"])
    for row in results["models"]:
        folder = Path(row["checkpoint"])
        assert folder == run_dir["out"] / row["role"]
        # The distilled student also gets its deployable ONNX copies (export: true by default).
        exported = ["model.int8.onnx", "model.onnx"] if row["role"] == "distilled" else []
        assert sorted(p.name for p in folder.iterdir()) == sorted(["model.json", "model.safetensors", *exported])
        model, meta = load_checkpoint(folder)
        assert meta["role"] == row["role"] and meta["architecture"]["name"] == row["name"]
        assert meta["classes"] == ["NORMAL", "PNEUMONIA"] and meta["input_size"] == 16
        assert "training" in meta and meta["selected"]["metric"] == "balanced_accuracy"


@pytest.mark.slow
def test_run_exports_the_distilled_student_with_parity_checked(run_dir):
    """`kdistill run` writes ONNX + int8 copies of the distilled student and records the checks."""
    export = read_results(run_dir["out"])["export"]
    assert Path(export["path"]) == run_dir["out"] / "distilled" / "model.onnx"
    assert export["max_prob_diff"] <= 1e-4
    assert export["int8"]["accuracy_delta"] == export["int8"]["accuracy_int8"] - export["int8"]["accuracy_fp32"]


@pytest.mark.slow
def test_run_leaves_no_temporary_files_or_resume_state(run_dir):
    """Atomic writes: no .tmp/.old names survive, and finished models leave no resume state."""
    assert leftover_temp_files(run_dir["out"]) == []
    assert list((run_dir["out"] / "resume").glob("*")) == []


@pytest.mark.slow
def test_splits_json_groups_are_disjoint(run_dir):
    """splits.json lets anyone check the patient grouping: no group in two splits."""
    splits = json.loads((run_dir["out"] / "splits.json").read_text())
    groups = {name: set(split["groups"]) for name, split in splits.items()}
    assert groups["train"].isdisjoint(groups["val"] | groups["test"])
    assert groups["val"].isdisjoint(groups["test"])


@pytest.mark.slow
def test_outputs_follow_the_umask(run_dir):
    """results.json and checkpoints are as readable as any file the user creates there."""
    probe = run_dir["out"] / "probe.txt"
    probe.write_text("x")
    expected = probe.stat().st_mode & 0o777
    probe.unlink()
    assert (run_dir["out"] / "results.json").stat().st_mode & 0o777 == expected
    assert (run_dir["out"] / "distilled" / "model.safetensors").stat().st_mode & 0o777 == expected


@pytest.mark.slow
def test_evaluate_reproduces_the_pipeline_test_metrics(run_dir, tmp_path, capsys):
    """`kdistill evaluate` on a folder holding the run's test images writes results.json whose
    metrics equal the pipeline's row for the same checkpoint."""
    splits = json.loads((run_dir["out"] / "splits.json").read_text())
    folder = tmp_path / "test_images"
    for name in splits["test"]["files"]:
        target = folder / Path(name).parent.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(name, target)
    checkpoint = run_dir["out"] / "distilled"
    out = tmp_path / "eval" / "results.json"
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(folder), "--out", str(out),
                 "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr()
    assert TABLE_HEADER in printed.out and TABLE_HEADER not in printed.err
    row = json.loads(out.read_text())["models"][0]
    assert ROW_KEYS <= set(row)
    expected = read_results(run_dir["out"])["models"][2]
    for key in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "ece"):
        assert row[key] == pytest.approx(expected[key], abs=1e-9), key
    assert leftover_temp_files(out.parent) == []


def test_train_subcommand_builds_one_model_at_a_time(image_root, tmp_path):
    """`kdistill train --role teacher`, then `--role distilled --teacher DIR` writes a checkpoint
    distilled from that teacher."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, out))
    assert main(["train", str(config), "--role", "teacher"]) == 0
    assert (out / "teacher" / "model.safetensors").is_file()
    assert main(["train", str(config), "--role", "distilled", "--teacher", str(out / "teacher")]) == 0
    _, meta = load_checkpoint(out / "distilled")
    assert meta["role"] == "distilled" and meta["training"]["method"] == "kd"
    assert not (out / "baseline").exists() and not (out / "results.json").exists()


@pytest.mark.slow
def test_demo_reaches_the_table(tmp_path, capsys):
    """`kdistill demo` (digits, about a minute on 2 cores) prints and writes the comparison table
    with a distilled row, and the models learn (10 classes: chance is 10%)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert TABLE_HEADER in printed.out and TABLE_HEADER not in printed.err  # the result on stdout
    results = read_results(out)
    rows = {row["role"]: row for row in results["models"]}
    assert set(rows) == set(ROLES)
    assert "| student distilled |" in (out / "report.md").read_text()
    assert all(row["accuracy"] > 0.5 for row in rows.values()), {r: rows[r]["accuracy"] for r in rows}
    assert rows["distilled"]["sensitivity"] is None  # multi-class: no positive class



@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory) -> dict:
    """`kdistill run` with `seeds: [1, 2]`: one teacher, a baseline and a distilled student per seed."""
    base = tmp_path_factory.mktemp("seeds")
    root = make_image_folder(base / "data")
    config_path = write_config(base / "config.yaml", tiny_config(root, base / "out", seeds=[1, 2]))
    code = main(["run", str(config_path)])
    return {"code": code, "out": base / "out", "config": config_path}


@pytest.mark.slow
def test_seeds_train_students_per_seed_in_seed_folders(seeds_run):
    assert seeds_run["code"] == 0
    out = seeds_run["out"]
    results = read_results(out)
    ids = [row["id"] for row in results["models"]]
    assert ids == ["teacher", "baseline-seed1", "distilled-seed1", "baseline-seed2", "distilled-seed2"]
    assert not (out / "baseline").exists() and (out / "teacher" / "model.json").is_file()
    for row in results["models"][1:]:
        assert Path(row["checkpoint"]) == out / f"seed{row['seed']}" / row["role"]
        assert load_checkpoint(row["checkpoint"])[1]["seed"] == row["seed"]
    rows = {row["id"]: row for row in results["models"]}
    assert rows["baseline-seed1"]["history"] != rows["baseline-seed2"]["history"]  # really other seeds
    assert Path(results["export"]["path"]) == out / "seed1" / "distilled" / "model.onnx"  # first seed
    assert leftover_temp_files(out) == [] and not (out / "resume").exists()
    assert not (out / "seed1" / "resume").exists()


@pytest.mark.slow
def test_seeds_summary_paired_tests_and_predictions(seeds_run):
    results = read_results(seeds_run["out"])
    rows = {row["id"]: row for row in results["models"]}
    summary = results["summary"]
    assert summary["teacher"]["accuracy"] == {"mean": rows["teacher"]["accuracy"], "std": 0.0, "n": 1}
    for role in ("baseline", "distilled"):
        values = [rows[f"{role}-seed{s}"]["auc"] for s in (1, 2)]
        assert summary[role]["auc"]["n"] == 2
        assert summary[role]["auc"]["mean"] == pytest.approx(sum(values) / 2)
    tests = results["paired_tests"]
    assert [(t["seed"], t["baseline"], t["distilled"]) for t in tests] == [
        (1, "baseline-seed1", "distilled-seed1"), (2, "baseline-seed2", "distilled-seed2")]
    for t in tests:
        assert 0 < t["p_value"] <= 1 and t["test"] == "mcnemar"
        assert t["accuracy_diff"] == pytest.approx(rows[t["distilled"]]["accuracy"] - rows[t["baseline"]]["accuracy"])
    predictions = results["predictions"]
    assert len(predictions["labels"]) == results["models"][0]["images"]
    assert set(predictions["probabilities"]) == set(rows)
    assert all(len(p) == len(predictions["labels"]) for p in predictions["probabilities"].values())


@pytest.mark.slow
def test_seeds_report_shows_mean_std_and_the_paired_test(seeds_run):
    report = (seeds_run["out"] / "report.md").read_text()
    assert "## Mean ± std over seeds" in report and "| student distilled | 2 |" in report
    assert "McNemar p" in report and "| student alone, seed 2 |" in report
    verdicts = ("Distillation helped", "Distillation did not help significantly", "Distillation hurt", "Mixed")
    assert sum(v in report for v in verdicts) == 1


@pytest.mark.slow
def test_seeds_resume_reuses_every_model_and_refuses_other_seeds(seeds_run, tmp_path, capsys):
    """--resume after a finished run retrains nothing and reproduces the metrics; a different
    seeds list is refused (it would mix two experiments in one folder). Runs on a copy, so the
    shared run folder other tests read stays as it was."""
    before = read_results(seeds_run["out"])
    copy = tmp_path / "copy"
    shutil.copytree(seeds_run["out"], copy)
    assert main(["run", str(seeds_run["config"]), "--resume", "export=false", "--out", str(copy)]) == 0
    log = capsys.readouterr().err
    assert log.count("already trained") == 5
    after = read_results(copy)
    for old, new in zip(before["models"], after["models"]):
        assert (old["id"], old["accuracy"], old["auc"], old["threshold"]) == (new["id"], new["accuracy"],
                                                                                new["auc"], new["threshold"])
    assert main(["run", str(seeds_run["config"]), "--resume", "seeds=[1,2,3]"]) != 0
    assert "seeds" in capsys.readouterr().err
