"""A comparison of distillation methods (``distill.methods``) in one run: per seed one distilled
student per method from the same teacher, against the same student alone; rows carry ``method``,
ids stay unique, checkpoints go to ``seed<k>/distilled-<method>/``, and both reports show the
methods table."""

from __future__ import annotations

import json

import pytest

from conftest import make_image_folder, tiny_config, write_config
from kdistill.cli import main
from kdistill.report.markdown import markdown_report
from kdistill.report.methods import method_rows

pytestmark = pytest.mark.slow  # every test here reads one full `kdistill run`

METHODS = ["dkd", "fitnet"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("compare")
    root = make_image_folder(base / "data")
    config = tiny_config(root, base / "out", seeds=[0, 1],
                         distill={"methods": METHODS, "params": {"dkd": {"warmup": 1}}})
    code = main(["run", str(write_config(base / "config.yaml", config)), "--out", str(base / "out")])
    results = json.loads((base / "out" / "results.json").read_text())
    return {"code": code, "out": base / "out", "results": results}


def test_rows_carry_their_method_and_unique_ids(compared):
    assert compared["code"] == 0
    rows = compared["results"]["models"]
    students = [(r["id"], r["role"], r["method"]) for r in rows if r["role"] != "teacher"]
    assert students == [("baseline-seed0", "baseline", "ce"), ("distilled-dkd-seed0", "distilled", "dkd"),
                        ("distilled-fitnet-seed0", "distilled", "fitnet"),
                        ("baseline-seed1", "baseline", "ce"), ("distilled-dkd-seed1", "distilled", "dkd"),
                        ("distilled-fitnet-seed1", "distilled", "fitnet")]
    for seed in (0, 1):
        for method in METHODS:
            assert (compared["out"] / f"seed{seed}" / f"distilled-{method}" / "model.json").is_file()
    assert all(r["seconds_per_epoch"] > 0 for r in rows if r["role"] != "teacher")
    # The generated images have two classes: DKD says it degenerates there, FitNet does not.
    degenerate = {r["method"]: r.get("degenerate") for r in rows if r["role"] == "distilled"}
    assert degenerate["dkd"] and degenerate["fitnet"] is None


def test_paired_tests_and_summary_per_method(compared):
    results = compared["results"]
    pairs = [(t["method"], t["seed"], t["baseline"], t["distilled"]) for t in results["paired_tests"]]
    assert pairs == [("dkd", 0, "baseline-seed0", "distilled-dkd-seed0"),
                     ("fitnet", 0, "baseline-seed0", "distilled-fitnet-seed0"),
                     ("dkd", 1, "baseline-seed1", "distilled-dkd-seed1"),
                     ("fitnet", 1, "baseline-seed1", "distilled-fitnet-seed1")]
    assert set(results["summary"]) == {"teacher", "baseline", "distilled-dkd", "distilled-fitnet"}
    assert results["summary"]["distilled-dkd"]["accuracy"]["n"] == 2


def test_reports_show_every_method(compared):
    report = (compared["out"] / "report.md").read_text()
    assert "## Distillation methods compared" in report
    table = report.split("## Distillation methods compared")[1].split("\n\n")[1].splitlines()
    names = [line.split("|")[1].strip() for line in table[2:]]
    assert names == ["ce (student alone)", "dkd", "fitnet"]
    dkd_line = table[3]
    assert "degenerates" in dkd_line and "seed 0:" in dkd_line and "seed 1:" in dkd_line
    assert "degenerates" not in table[4]
    assert "## Distilled (dkd) vs alone" in report and "## Distilled (fitnet) vs alone" in report
    html = (compared["out"] / "report.html").read_text()
    assert "Distillation methods compared" in html and "distilled-fitnet-seed1" in html
    assert report == markdown_report(compared["results"]) + report[len(markdown_report(compared["results"])):]
    rows = method_rows(compared["results"])
    assert [r["n"] for r in rows] == [2, 2, 2]
