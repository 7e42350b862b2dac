"""``kdistill bench`` rows and the interleaved timer behind them."""

from __future__ import annotations

import json
import time

import pytest
from torch import nn

from kdistill.cli import main
from kdistill.models import build_model
from kdistill.deploy.profile import time_interleaved
from kdistill.models.size import count_bytes, count_macs

from conftest import require_or_skip  # noqa: E402

require_or_skip("onnxruntime")  # strict under KDISTILL_REQUIRE_EXTRAS=1

KEYS = {"model", "runtime", "batch", "latency_ms", "throughput_img_s", "macs", "spread_ms", "threads"}


def test_bench_json_rows(capsys):
    """Every runtime at batch 1 and 64 with the keys; MACs from count_macs; random int8 calibration stated."""
    code = main(["bench", "--model", "reference_student", "--input-size", "32", "--json", "--rounds", "3",
                 "--int8", "--threads", "1"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(KEYS <= set(row) for row in rows)
    runtimes = {"torch eager", "torch channels-last", "onnxruntime fp32", "onnxruntime int8"}
    assert {(r["runtime"], r["batch"]) for r in rows} == {(rt, b) for rt in runtimes for b in (1, 64)}
    macs = count_macs(build_model("reference_student", 2, input_size=32), 32, 3)
    assert all(r["macs"] == macs and r["threads"] == 1 and r["latency_ms"] > 0 for r in rows)
    assert all(r["throughput_img_s"] == pytest.approx(r["batch"] / r["latency_ms"] * 1e3) for r in rows)
    assert "random" in next(r for r in rows if r["runtime"] == "onnxruntime int8")["calibration"]


def test_bench_without_models_is_an_error(capsys):
    assert main(["bench"]) == 2
    assert "--model" in capsys.readouterr().err


def test_time_interleaved_rotates_and_separates():
    """Rounds alternate between callables (rotating order) and the slower one measures slower."""
    calls = []

    def fast():
        calls.append("fast")

    def slow():
        calls.append("slow")
        time.sleep(0.002)

    timed = time_interleaved({"fast": fast, "slow": slow}, rounds=4, min_round_s=0.0, warmup=1)
    timed_part = calls[4:]  # after 2 warm-up + 2 sizing calls
    assert timed_part == ["fast", "slow", "slow", "fast", "fast", "slow", "slow", "fast"]
    assert timed["slow"][0] > timed["fast"][0] + 0.001
    assert all(spread >= 0 for _, spread in timed.values())


def test_count_bytes_sums_operator_tensors_and_skips_views():
    """Flatten is a view (0 bytes); the Linear reads input, weight and bias and writes its output."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    expected = (3 * 4 * 4 + 5 * 48 + 5 + 5) * 4  # float32 input, weight, bias, output
    assert count_bytes(model, 4, 3) == expected


def test_bench_rows_have_bytes_and_ratios():
    """Both ratios against the largest model; the student moves far fewer bytes than the teacher."""
    from kdistill.deploy.bench import load_bench_models, run_bench

    models = load_bench_models([], ["tiny_cnn_d2", "reference_student"], input_size=32, num_classes=2)
    rows = run_bench(models, rounds=2)
    student = next(r for r in rows if r["model"] == "reference_student" and r["batch"] == 1)
    assert student["bytes"] == count_bytes(models[1].model, 32, 3)
    reference = next(r for r in rows if r["model"] == student["reference_model"])
    assert student["bytes_ratio"] == pytest.approx(reference["bytes"] / student["bytes"])
    assert student["latency_ratio"] > 0


def test_bench_times_the_deploy_form_and_counts_the_architecture(tmp_path, monkeypatch):
    """ONNX Runtime and PyTorch rows run deploy_form(model); params/MACs/bytes stay the original's."""
    import kdistill.deploy.bench
    from kdistill.deploy.bench import load_bench_models, runtimes
    from kdistill.models.size import model_size
    from kdistill.models.reference.deploy_form import DeployedReferenceStudent

    exported = []
    real_export = kdistill.deploy.bench.torch_to_onnx
    monkeypatch.setattr(kdistill.deploy.bench, "torch_to_onnx",
                        lambda model, *args: exported.append(model) or real_export(model, *args))
    ran = []
    monkeypatch.setattr(kdistill.deploy.bench, "_torch_call", lambda model, x: ran.append(model) or (lambda: model(x)))
    [bench_model] = load_bench_models([], ["reference_student"], input_size=32, num_classes=2)
    made = runtimes(bench_model, tmp_path, threads=1, int8=False)
    assert set(made) == {"torch eager", "torch channels-last", "onnxruntime fp32"}
    for make in made.values():
        make(1)()
    assert [type(m) for m in exported] == [DeployedReferenceStudent]
    assert [type(m) for m in ran] == [DeployedReferenceStudent] * 2
    original = build_model("reference_student", 2, input_size=32)
    assert model_size(bench_model.model, bench_model.meta) == {
        "params": sum(p.numel() for p in original.parameters()),
        "macs": count_macs(original, 32, 3), "bytes": count_bytes(original, 32, 3)}


def test_student_floor_benchmark_times_the_parts_it_names(capsys):
    """benchmarks/student_floor.py: its 'conv only' variant is the inference form's own first layer,
    and it prints one row per variant with the ratio against ResNet-18 int8."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "student_floor.py"
    spec = importlib.util.spec_from_file_location("student_floor", path)
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    made = floor.variants(32)
    assert made["student conv only"].conv is made["student"].conv
    assert made["original conv only"].conv.kernel_size == (3, 3)

    result = floor.main(["--input-size", "32", "--rounds", "1", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert [r["variant"] for r in printed["rows"]] == list(made)
    reference = printed["rows"][0]["latency_ms"]
    for row in printed["rows"]:
        assert row["latency_ms"] > 0
        assert row["ratio_vs_resnet18_int8"] == pytest.approx(reference / row["latency_ms"])
    assert printed["student_ms_needed_for_target"] == pytest.approx(reference / 40)


def test_bench_models_take_the_checkpoints_input_and_mixed_inputs_are_refused(tmp_path, capsys):
    """A --model next to a checkpoint is built for the checkpoint's input size; models fed different
    sizes are refused with one line naming both (their ratios would compare different work)."""
    from deploy_helpers import make_checkpoint

    from kdistill.deploy.bench import load_bench_models

    checkpoint = make_checkpoint(tmp_path / "student", size=32)
    models = load_bench_models([str(checkpoint)], ["tiny_cnn_d2"], input_size=None, num_classes=2)
    assert [m.meta["input_size"] for m in models] == [32, 32]

    code = main(["bench", "--checkpoint", str(checkpoint), "--model", "tiny_cnn_d2", "--input-size", "48"])
    error = capsys.readouterr().err.strip()
    assert code != 0 and len(error.splitlines()) == 1
    assert "32 px" in error and "48 px" in error and "different inputs" in error
    # Differing channels at one size are fine: each model reads its own input.
    models = load_bench_models([str(checkpoint)], ["reference_student"], input_size=None, num_classes=2,
                               channels={"reference_student": [1]})
    assert [m.meta["channels"] for m in models] == [3, 1]


def test_bench_times_models_with_different_channels_each_on_its_own_input(capsys):
    """--channels: the 1-channel student and its 3-channel twin beside a tiny CNN; every row names
    its channels, the MACs are counted on that many input planes, and ONNX Runtime ran each."""
    code = main(["bench", "--model", "tiny_cnn_d2", "--model", "reference_student", "--channels",
                 "reference_student=1,3", "--input-size", "32", "--rounds", "2", "--json", "--threads", "1"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    channels = {r["model"]: r["channels"] for r in rows}
    assert channels == {"tiny_cnn_d2": 3, "reference_student (1 ch)": 1, "reference_student (3 ch)": 3}
    for label, count in (("reference_student (1 ch)", 1), ("reference_student (3 ch)", 3)):
        macs = count_macs(build_model("reference_student", 2, input_size=32, in_channels=count), 32, count)
        assert {r["macs"] for r in rows if r["model"] == label} == {macs}
    assert {r["runtime"] for r in rows if r["channels"] == 1} >= {"onnxruntime fp32", "torch eager"}


@pytest.mark.parametrize("item", ["reference_student=2", "reference_student", "=1", "other=1"])
def test_bad_channels_option_is_one_line_error(item, capsys):
    assert main(["bench", "--model", "reference_student", "--channels", item, "--input-size", "16"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--channels" in error


def test_int8_bench_states_both_comparisons_at_1_and_2_threads(capsys):
    """--int8 without --threads: 1 and 2 threads, and per thread count the fastest-vs-fastest and
    the fp32-ORT-vs-fp32-ORT ratios, each equal to the rows' latencies divided."""
    from kdistill.deploy.bench import bench_command, format_comparison, parse_channels

    text = bench_command([], ["tiny_cnn_d3", "reference_student"], input_size=32, num_classes=2,
                         threads=None, int8=True, calibration=None, rounds=2, as_json=True,
                         channels=parse_channels(["reference_student=1"]))
    rows = json.loads(text)
    assert {r["threads"] for r in rows} == {1, 2}
    for threads in (1, 2):
        ones = {(r["model"], r["runtime"]): r for r in rows if r["threads"] == threads and r["batch"] == 1}
        student = ones[("reference_student", "onnxruntime fp32")]
        reference = ones[("tiny_cnn_d3", "onnxruntime fp32")]
        assert student["channels"] == 1 and student["reference_model"] == "tiny_cnn_d3"
        assert student["same_runtime_ratio"] == pytest.approx(reference["latency_ms"] / student["latency_ms"])
        best = min((r for (m, _), r in ones.items() if m == "tiny_cnn_d3"), key=lambda r: r["latency_ms"])
        fastest = min((r for (m, _), r in ones.items() if m == "reference_student"), key=lambda r: r["latency_ms"])
        assert student["latency_ratio"] == pytest.approx(best["latency_ms"] / fastest["latency_ms"])
    table = format_comparison(rows).splitlines()
    lines = [line.split() for line in table if line.startswith(("1 ", "2 "))]
    assert [line[:3] for line in lines] == [["1", "reference_student", "1"], ["2", "reference_student", "1"]]
    for line, threads in zip(lines, (1, 2)):
        student = next(r for r in rows if r["threads"] == threads and r["model"] == "reference_student"
                       and r["batch"] == 1 and r["runtime"] == "onnxruntime fp32")
        assert f"{student['latency_ratio']:.1f}x" in line and f"{student['same_runtime_ratio']:.1f}x" in line
