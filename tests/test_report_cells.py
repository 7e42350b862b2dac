"""The numbers users read: every cell of the comparison rows in report.md and report.html, found
by model, equals results.json formatted as the report states (percent to 0.1, scores to 0.001).

One real pipeline run on deliberately overlapping classes, so the models' numbers differ and a
swapped row or column cannot pass."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, patient_file_name, tiny_config, write_config
from kdistill.cli import main

pytestmark = pytest.mark.slow  # every test here reads one full `kdistill run`

ROLE_LABELS = {"teacher": "teacher", "baseline": "student alone", "distilled": "student distilled"}


def overlapping_image_folder(root: Path, per_class: int = 40) -> Path:
    """Two classes whose brightness distributions overlap: no model is perfect on the test split."""
    rng = np.random.default_rng(7)
    for label, name in enumerate(CLASSES):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            base = 115 if label == 0 else 140
            pixels = np.clip(base + rng.normal(0, 60, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / patient_file_name(label, i // 2, i))
    return root


@pytest.fixture(scope="module")
def run_out(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report_cells")
    root = overlapping_image_folder(tmp / "data")
    config = tiny_config(root, tmp / "out", student={"train": {"epochs": 2, "batch_size": 8, "lr": 0.003}})
    config["data"].update({"val_fraction": 0.3, "test_fraction": 0.3})
    config["export"] = False
    assert main(["run", str(write_config(tmp / "config.yaml", config))]) == 0
    return tmp / "out"


# ---------------------------------------------------------------- formatting, as the report states


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def count(value: int) -> str:
    """438 -> "438", 28160 -> "28.16 k", 5519360 -> "5.52 M"."""
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return str(value)


def with_interval(text: str, interval, fmt) -> str:
    return f"{text} [{fmt(interval[0])}, {fmt(interval[1])}]" if interval else text


# ---------------------------------------------------------------- report.md


def markdown_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """The comparison table's header and rows, as stripped cell strings."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model | role | accuracy %"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(markdown_cells(line))
    return markdown_cells(lines[start]), rows


def expected_markdown_cells(row: dict) -> dict[str, str]:
    ci = row.get("ci") or {}
    speedup = row.get("speedup_vs_teacher")
    return {
        "model": row["name"], "role": ROLE_LABELS[row["role"]],
        "accuracy %": with_interval(pct(row["accuracy"]), ci.get("accuracy"), pct),
        "balanced acc %": pct(row["balanced_accuracy"]), "sensitivity %": pct(row["sensitivity"]),
        "specificity %": pct(row["specificity"]), "AUC": with_interval(num(row["auc"]), ci.get("auc"), num),
        "ECE": num(row["ece"]), "params": count(row["params"]), "MACs": count(row["macs"]),
        "latency b1 (ms)": num(row["latency_ms_batch1"], 2),
        f"throughput b{row['throughput_batch']} (img/s)": f"{row['throughput_img_s']:.0f}",
        "speed-up vs teacher": "n/a" if speedup is None else f"{speedup:.1f}x",
    }


def test_report_md_rows_match_results_json_cell_by_cell(run_out):
    results = json.loads((run_out / "results.json").read_text())
    header, rows = markdown_rows((run_out / "report.md").read_text())
    by_role = {row[header.index("role")]: dict(zip(header, row)) for row in rows}
    assert len(by_role) == len(rows) == len(results["models"]) == 3
    for model in results["models"]:
        assert by_role[ROLE_LABELS[model["role"]]] == expected_markdown_cells(model), model["id"]


# ---------------------------------------------------------------- report.html


class TableCells(HTMLParser):
    """Every table as rows of cells; a cell is the list of its text pieces (a ``muted`` span's
    text is a piece of its own), so "0.283 → 0.120" and "[0.8, 0.9]" stay readable."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[list[str]]]] = []
        self.in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append([])
            self.in_cell = True
        elif tag == "span" and self.in_cell:
            self.tables[-1][-1][-1].append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data):
        if self.in_cell and data.strip():
            cell = self.tables[-1][-1][-1]
            if cell and cell[-1] == "":
                cell[-1] = data.strip()
            else:
                cell.append(data.strip())


def html_models_table(text: str) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
    """The every-model table: its header and, per model id (the first cell's first piece), the
    cells by column title."""
    parser = TableCells()
    parser.feed(text)
    table = next(t for t in parser.tables if t and [" ".join(c) for c in t[0][:2]] == ["model", "seed"]
                 and any("temperature" in " ".join(c) for c in t[0]))
    header = [" ".join(cell) for cell in table[0]]
    return header, {row[0][0]: dict(zip(header, row)) for row in table[1:]}


def interval(bounds, fmt) -> list[str]:
    """A muted ``[lo, hi]`` piece after a value, or nothing."""
    return [f"[{fmt(bounds[0])}, {fmt(bounds[1])}]"] if bounds else []


def expected_html_cells(row: dict, header: list[str]) -> dict[str, list[str]]:
    ci = row.get("ci") or {}
    ece = num(row["ece"]) if row.get("ece_uncalibrated") is None else f"{num(row['ece_uncalibrated'])} → {num(row['ece'])}"
    latency = [num(row["latency_ms_batch1"], 2)] + ([row["runtime"]] if row.get("runtime") else [])
    expected = {
        "model": [row["id"], row["name"]], "seed": [str(row["seed"])],
        "accuracy %": [pct(row["accuracy"])] + interval(ci.get("accuracy"), pct),
        "balanced acc %": [pct(row["balanced_accuracy"])], "sensitivity %": [pct(row["sensitivity"])],
        "specificity %": [pct(row["specificity"])], "AUC": [num(row["auc"])] + interval(ci.get("auc"), num),
        "threshold": [num(row["threshold"])], "temperature": [f"{row['temperature']:.3g}"],
        "ECE": [ece], "params": [count(row["params"])], "MACs": [count(row["macs"])],
        "latency b1 (ms)": latency, "speed-up vs teacher": [f"{row['speedup_vs_teacher']:.1f}x"],
    }
    # Titles may carry a note ("accuracy % [95% CI]", "ECE (raw → scaled)"): match by their start.
    return {title: expected[next(k for k in expected if title == k or title.startswith(k + " "))]
            for title in header}


def test_report_html_rows_match_results_json_cell_by_cell(run_out):
    results = json.loads((run_out / "results.json").read_text())
    header, by_id = html_models_table((run_out / "report.html").read_text())
    assert sorted(by_id) == sorted(model["id"] for model in results["models"])
    for model in results["models"]:
        assert by_id[model["id"]] == expected_html_cells(model, header), model["id"]


def test_the_rows_can_tell_the_models_apart(run_out):
    """Swapped rows would show: each model's metric cells differ from every other model's."""
    results = json.loads((run_out / "results.json").read_text())
    keys = ("accuracy", "sensitivity", "specificity", "auc", "ece", "params")
    signatures = {tuple(round(m[k], 6) for k in keys) for m in results["models"]}
    assert len(signatures) == len(results["models"])
    assert any(m["accuracy"] < 1.0 for m in results["models"])  # not all perfect (the classes overlap)
    assert any(m["sensitivity"] != m["specificity"] for m in results["models"])
