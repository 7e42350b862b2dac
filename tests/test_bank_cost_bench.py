"""benchmarks/bank_cost.py on tiny settings: every documented figure is there, and the ratios are
positive and finite."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

BENCH = Path(__file__).parents[1] / "benchmarks" / "bank_cost.py"
ROW_KEYS = {
    "size", "views", "images", "draw_s", "render_s", "teacher_pass_s", "teacher_forward_in_pass_s", "build_s",
    "bare_forward_s", "write_s", "build_ms_per_view", "bare_forward_ms_per_view", "write_ms_per_view",
    "build_over_forward_write", "full_build_s", "full_bare_forward_s", "view_bytes", "view_row_bytes",
    "table_bytes_per_view_float32", "table_bytes_per_view_float16", "table_file_bytes_per_view_float32",
    "table_file_bytes_per_view_float16", "full_views_mb", "full_table_mb_float32", "full_table_mb_float16",
    "student_alone_s_per_image", "student_bank_s_per_image", "student_bank_vs_alone", "student_rendered_s_per_image",
    "student_rendered_vs_alone", "full_bank_materialized"}


def load_bench():
    spec = importlib.util.spec_from_file_location("bank_cost", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bank_cost_prints_every_figure_with_finite_ratios(tmp_path, capsys):
    bench = load_bench()
    saved = tmp_path / "bank_cost.json"
    figures = bench.main(["--images", "8", "--sizes", "32", "--views", "1", "2", "--teacher", "reference_student",
                          "--epochs", "1", "--rounds", "1", "--json", "--out", str(saved)])
    assert json.loads(capsys.readouterr().out) == figures == json.loads(saved.read_text())
    assert [(row["size"], row["views"]) for row in figures["rows"]] == [(32, 1), (32, 2)]
    # the bank is measured on views beyond the flip, whatever the packaged config trains on
    assert figures["augment"]["scale"] == [0.6, 1.0] and figures["augment"]["rotation"] == 7
    for row in figures["rows"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        for ratio in ("build_over_forward_write", "student_bank_vs_alone", "student_rendered_vs_alone"):
            assert math.isfinite(row[ratio]) and row[ratio] > 0, (ratio, row[ratio])
        # The build's parts add up, and the teacher's forwards happen inside its pass.
        assert math.isclose(row["build_s"], row["draw_s"] + row["render_s"] + row["teacher_pass_s"], rel_tol=1e-6)
        assert 0 < row["teacher_forward_in_pass_s"] <= row["teacher_pass_s"]
        # 8 generated 32x32 grey images: one uint8 byte per pixel; float16 halves the float32 table.
        assert row["view_bytes"] == 32 * 32
        assert row["table_bytes_per_view_float16"] * 2 == row["table_bytes_per_view_float32"] == 2 * 4
        assert row["full_views_mb"] == row["view_bytes"] * row["views"] * figures["full_images"] / 1e6
