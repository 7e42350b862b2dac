"""A frozen teacher's inference passes in ONNX Runtime: checked against PyTorch before use, used
by every inference pass of that model only, and kept apart in the teacher-table cache."""

from __future__ import annotations

import pytest
import torch

from conftest import require_or_skip, tiny_config, write_config
from kdistill.config import load_config
from kdistill.data import ImageSplit
from kdistill.distill.teacher import CachedTeacher, freeze
from kdistill.eval.inference import predict_logits
from kdistill.models import build_model
from kdistill.models.inference import inference_function, registered_runner, use_runner
from kdistill.pipeline import run

require_or_skip("onnxruntime")

from kdistill.deploy.runner import onnx_runner  # noqa: E402


def frozen_cnn(size: int = 24) -> torch.nn.Module:
    torch.manual_seed(0)
    return freeze(build_model("tiny_cnn_d2", 2, input_size=size, width=4))


def split_of(count: int = 10, size: int = 24) -> ImageSplit:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)
    return ImageSplit(images, torch.arange(count) % 2, [f"i{i}" for i in range(count)], [str(i) for i in range(count)])


def test_the_runner_matches_pytorch_and_serves_every_pass_of_its_model_only():
    model, other = frozen_cnn(), frozen_cnn()
    runner = onnx_runner(model, channels=3, input_size=24, threads=1, what="test")
    assert runner is not None
    split = split_of()
    expected = predict_logits(model, split, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    use_runner(model, runner)
    assert registered_runner(model) is runner and inference_function(model) is runner
    assert registered_runner(other) is None
    through_runner = predict_logits(model, split, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert float((through_runner - expected).abs().max()) < 1e-4


def test_a_model_that_still_trains_cannot_get_a_runner():
    model = build_model("tiny_cnn_d2", 2, input_size=24, width=4)
    with pytest.raises(ValueError, match="frozen"):
        use_runner(model, lambda x: x)


def test_a_table_made_through_the_runner_is_stored_apart_from_the_pytorch_one(tmp_path):
    split = split_of()
    split.cache_key = "key"
    plain = CachedTeacher(frozen_cnn(), split, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, cache_dir=tmp_path)
    model = frozen_cnn()
    use_runner(model, onnx_runner(model, channels=3, input_size=24, threads=1, what="test"))
    fast = CachedTeacher(model, split, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, cache_dir=tmp_path)
    assert len(list((tmp_path / "teacher").glob("logits-*.safetensors"))) == 2
    assert float((fast.table - plain.table).abs().max()) < 1e-4


@pytest.mark.slow
def test_a_run_with_the_runner_gives_the_same_decisions(tmp_path, image_root):
    torch_run = run(load_config(write_config(tmp_path / "a.yaml", tiny_config(image_root, tmp_path / "a"))))
    config = tiny_config(image_root, tmp_path / "b")
    config["teacher"]["onnx_inference"] = True
    onnx_run = run(load_config(write_config(tmp_path / "b.yaml", config)))
    for a, b in zip(torch_run["models"], onnx_run["models"]):
        assert a["accuracy"] == b["accuracy"] and a["auc"] == pytest.approx(b["auc"], abs=1e-6)


def test_the_runtime_benchmark_prints_both_rates_and_their_ratio(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "teacher_runtime.py"
    spec = importlib.util.spec_from_file_location("teacher_runtime", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.main(["--model", "tiny_cnn_d2", "--size", "16", "--batch", "2", "--threads", "1", "--rounds", "1"])
    rates = figures["images_per_s"]
    assert rates["pytorch"] > 0 and rates["onnxruntime"] > 0
    assert figures["onnxruntime_over_pytorch"] == pytest.approx(rates["onnxruntime"] / rates["pytorch"])
    assert "img/s" in capsys.readouterr().out
