"""``student.budget`` (a student over a bound is refused before training, with the figure) and
``kdistill search-student`` (candidates within the budget, ranked on validation only, the Pareto
files, the full run of the winner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kdistill.search as search_module
from conftest import make_image_folder, tiny_config, write_config
from kdistill.cli import main
from kdistill.config import load_config
from kdistill.models.size import count_macs, count_parameters
from kdistill.errors import ConfigError
from kdistill.models import build_model

GRID = {"models": ["kd_mobile", "kd_plain"], "widths": [2, 4], "depths": [1], "stem_strides": [2],
        "se": [False], "expansion": 2, "proxy_epochs": 1}


def member_params(name: str, width: int) -> int:
    args = {"width": width, "depth": 1, "stem_stride": 2} | ({"expansion": 2} if name == "kd_mobile" else {})
    return count_parameters(build_model(name, 2, input_size=16, in_channels=3, **args))


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_params_over_budget_is_refused_before_training(image_root: Path, tmp_path: Path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_config(image_root, tmp_path / "run"))
    code, err = run_cli(capsys, "run", str(config), "student.budget.params=100")
    bound_line = [line for line in err.splitlines() if "student.budget.params" in line]
    assert code == 2 and len(bound_line) == 1
    assert "reference_student has " in bound_line[0] and "> 100" in bound_line[0]
    assert not (tmp_path / "run" / "teacher").exists()  # nothing trained


def test_latency_over_budget_is_refused_with_the_measured_figure(image_root: Path, tmp_path: Path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_config(image_root, tmp_path / "run"))
    code, err = run_cli(capsys, "train", str(config), "--role", "baseline", "student.budget.latency_ms=1e-6")
    line = next(line for line in err.splitlines() if "student.budget.latency_ms" in line)
    assert code == 2 and " ms > 1e-06 ms (batch 1, " in line
    assert not (tmp_path / "run" / "baseline").exists()


def test_a_student_within_the_budget_trains(image_root: Path, tmp_path: Path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_config(image_root, tmp_path / "run"))
    code, _ = run_cli(capsys, "train", str(config), "--role", "baseline", "student.budget.latency_ms=1e6",
                      "student.budget.params=1000000", "student.budget.threads=1")
    assert code == 0 and (tmp_path / "run" / "baseline" / "model.json").is_file()


def test_budget_keys_are_validated(image_root: Path, tmp_path: Path):
    config = write_config(tmp_path / "c.yaml", tiny_config(image_root, tmp_path / "run"))
    with pytest.raises(ConfigError, match="student.budget.latency_ms"):
        load_config(config, ["student.budget.latency_ms=-1"])
    with pytest.raises(ConfigError, match="student.budget.speed"):
        load_config(config, ["student.budget.speed=1"])


class SpyOnTestSplit:
    """Stands in for the test split during the search's own stages: any use is recorded, then fails."""

    def __init__(self):
        self.touched: list[str] = []

    def __getattr__(self, name):
        self.touched.append(name)
        raise AssertionError(f"the search touched the test split ({name})")

    def __len__(self):
        self.touched.append("__len__")
        raise AssertionError("the search touched the test split (len)")


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> dict:
    """One `kdistill search-student` on tiny images: 4 family members + the reference student,
    a parameter bound that leaves out the largest member."""
    base = tmp_path_factory.mktemp("search")
    root = make_image_folder(base / "data", per_class=24)
    bound = sorted(member_params(name, w) for name in GRID["models"] for w in GRID["widths"])[-1] - 1
    config = tiny_config(root, base / "run", search=GRID, export=False,
                         student={"budget": {"params": bound, "latency_ms": 1e6, "threads": 1}})
    path = write_config(base / "c.yaml", config)
    spy = SpyOnTestSplit()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDISTILL_CACHE_DIR", str(base / "cache"))
        patch.setattr(search_module, "ForbiddenTestSplit", lambda command: spy)
        code = main(["search-student", str(path), "--out", str(base / "search")])
    out = base / "search"
    return {"code": code, "out": out, "bound": bound, "spy": spy,
            "summary": json.loads((out / "search.json").read_text())}


@pytest.mark.slow
def test_search_writes_its_files_and_ranks_on_validation(searched):
    out, summary = searched["out"], searched["summary"]
    assert searched["code"] == 0
    assert all((out / name).is_file() and (out / name).stat().st_size > 0 for name in search_module.FILES)
    trained = [c for c in summary["candidates"] if c["status"] == "trained"]
    scores = [c["score"] for c in trained]
    assert len(trained) == 4 and scores == sorted(scores, reverse=True)  # 4 within of 5 rows
    assert summary["best"]["label"] == trained[0]["label"]
    assert any(c["reference"] for c in trained) and any(c["pareto"] for c in trained)
    assert searched["spy"].touched == []  # ranked on validation; the test split never read
    table = (out / "search.md").read_text()
    assert all(c["label"] in table for c in summary["candidates"])


@pytest.mark.slow
def test_search_respects_the_budget(searched):
    candidates = searched["summary"]["candidates"]
    over = [c for c in candidates if c["status"].startswith("over budget")]
    assert len(over) == 1 and over[0]["params"] > searched["bound"] and over[0]["score"] is None
    assert all(c["params"] <= searched["bound"] for c in candidates if c["status"] == "trained")
    assert all(c["latency_ms"] > 0 for c in candidates if c["status"] == "trained")


@pytest.mark.slow
def test_search_trains_the_winner_fully_through_the_pipeline(searched):
    best, final = searched["summary"]["best"], searched["out"] / "best"
    for role in ("baseline", "distilled"):
        meta = json.loads((final / role / "model.json").read_text())
        assert meta["architecture"]["name"] == best["model"]
        assert {k: meta["architecture"]["args"][k] for k in best["model_args"]} == best["model_args"]
        assert meta["training"]["epochs"] == 2  # the full recipe, not the proxy's 1 epoch
    assert (final / "results.json").is_file()
    assert not (final / "teacher").exists()  # the search's teacher is reused, not trained again


@pytest.mark.slow
def test_the_final_reports_show_every_candidate(searched):
    final, summary = searched["out"] / "best", searched["summary"]
    results = json.loads((final / "results.json").read_text())
    assert [c["label"] for c in results["search"]["candidates"]] == [c["label"] for c in summary["candidates"]]
    html = (final / "report.html").read_text()
    section = html.split("<h2>Student search</h2>", 1)[1].split("<h2>", 1)[0]
    assert '<img src="data:image/png;base64,' in section
    assert summary["best"]["label"] in section and "(chosen)" in section and "(reference)" in section
    markdown = (final / "report.md").read_text()
    assert "## Student search" in markdown and f"| 1 | {summary['best']['label']}" in markdown
    assert markdown.count("(chosen) |") == 1


def test_time_budget_stops_new_candidates(image_root: Path, tmp_path: Path, monkeypatch):
    config = load_config(write_config(tmp_path / "c.yaml", tiny_config(
        image_root, tmp_path / "run", search={**GRID, "time_budget_s": 1e-9}, export=False)))
    monkeypatch.setattr(search_module, "run", lambda config: {"out": config.out})  # no full run
    summary = search_module.search_student(config, tmp_path / "search")
    trained = [c for c in summary["candidates"] if c["status"] == "trained"]
    assert len(trained) == 1 and len(summary["skipped"]) == 4
    assert "skipped: time budget" in (tmp_path / "search" / "search.md").read_text()


def test_pareto_front_marks_the_undominated():
    rows = [{"label": n, "status": "trained", "score": s, "latency_ms": t}
            for n, s, t in (("fast", 0.7, 1.0), ("good", 0.9, 3.0), ("dominated", 0.8, 4.0))]
    search_module.mark_pareto(rows, lower_is_better=False)
    assert [r["pareto"] for r in rows] == [True, True, False]


def test_search_keys_are_validated(image_root: Path, tmp_path: Path):
    config = write_config(tmp_path / "c.yaml", tiny_config(image_root, tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"search.stem_strides\[0\]: 3"):
        load_config(config, ["search.stem_strides=[3]"])
    with pytest.raises(ConfigError, match="search.models"):
        load_config(config, ["search.models=[tiny_cnn_d2]"])


def test_a_configured_family_student_is_not_listed_twice(image_root: Path, tmp_path: Path):
    student = {"model": "kd_plain", "model_args": {"width": 2, "depth": 1, "stem_stride": 2, "se": False}}
    config = load_config(write_config(tmp_path / "c.yaml", tiny_config(image_root, tmp_path / "run",
                                                                       search=GRID, student=student)))
    labels = [search_module.label(c) for c in search_module.candidate_grid(config)]
    assert len(labels) == 4 and labels[0] == "kd_plain w2 d1 s2" and len(set(labels)) == 4


def test_candidates_are_sized_and_timed_on_the_students_channels(image_root: Path, tmp_path: Path, monkeypatch):
    # A grayscale student of a 3-channel teacher: the stem has 1 input channel, not data.channels.
    config = load_config(write_config(tmp_path / "c.yaml", tiny_config(image_root, tmp_path / "run",
                                                                       student={"channels": 1})))
    assert config.data.channels == 3
    data = type("Data", (), {"classes": ["a", "b"], "input_size": 16, "channels": 3})()
    timed: list[int] = []

    def fake_latency(model, name, *, channels, **_):
        timed.append(channels)
        return {"latency_ms": 0.1, "runtime": "torch", "threads": 1}

    monkeypatch.setattr(search_module, "measure_latency", fake_latency)
    args = {"width": 2, "depth": 1, "stem_stride": 2, "expansion": 2}
    row = search_module.measure_candidate({"model": "kd_mobile", "model_args": args, "reference": False}, config, data)
    grayscale = build_model("kd_mobile", 2, input_size=16, in_channels=1, **args)
    assert row["params"] == count_parameters(grayscale) != member_params("kd_mobile", 2)
    assert row["macs"] == count_macs(grayscale, 16, 1)
    assert timed == [1]
