"""Grayscale students: ``student.channels=1`` beside a 3-channel teacher, the exact channel adapter
for a live teacher, and the channel count carried by checkpoints, ONNX metadata and predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import make_image_folder, require_or_skip, tiny_config, write_config
from kdistill.cli import main
from kdistill.config import from_dict
from kdistill.data.transforms import normalization, to_model_input
from kdistill.models import build_model
from kdistill.models.channels import ChannelAdapter
from kdistill.models.checkpoint import read_meta
from kdistill.distill.inputs import live_teacher_input


def _gray_batch() -> torch.Tensor:
    return torch.randint(0, 256, (4, 1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_reference_student_with_one_channel_has_100402_parameters():
    """Conv(1, 4, 3): 36 + 4 weights fewer than Conv(3, 4, 3) -> 100,474 - 72 = 100,402 at 224."""
    model = build_model("reference_student", 2, input_size=224, in_channels=1)
    assert sum(p.numel() for p in model.parameters()) == 100_402


def test_channel_adapter_gives_the_teacher_its_own_three_channel_input():
    """Gray batch normalized for 1 channel -> adapter -> exactly the 3-channel ImageNet input."""
    images = _gray_batch()
    (gray_mean, gray_std), (rgb_mean, rgb_std) = normalization(1), normalization(3)
    adapter = ChannelAdapter(nn.Identity(), mean_in=gray_mean, std_in=gray_std, mean_out=rgb_mean, std_out=rgb_std)
    adapted = adapter(to_model_input(images, 1, gray_mean, gray_std))
    expected = to_model_input(images, 3, rgb_mean, rgb_std)
    assert adapted.shape == expected.shape == (4, 3, 12, 12)
    assert torch.allclose(adapted, expected, atol=2e-6), (adapted - expected).abs().max()


def test_live_teacher_input_wraps_only_when_the_channels_differ():
    """A 3-channel teacher on a 1-channel student's batch: the same logits as on its own input; the
    bare teacher cannot even read that batch."""
    torch.manual_seed(0)
    teacher = build_model("tiny_cnn_d2", 2, input_size=12, width=4).eval()
    config = from_dict({"data": {"dataset": "digits", "input_size": 12}, "student": {"channels": 1}})
    data = type("Data", (), {"channels": 3, "normalization": normalization(3)})()
    assert live_teacher_input(teacher, data, 3) is teacher
    wrapped = live_teacher_input(teacher, data, config.student.channels)
    images = _gray_batch()
    gray = to_model_input(images, 1, *normalization(1))
    with torch.no_grad():
        assert torch.allclose(wrapped(gray), teacher(to_model_input(images, 3, *normalization(3))), atol=1e-5)
        with pytest.raises(RuntimeError):
            teacher(gray)


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory) -> dict:
    """A tiny run: 3-channel teacher, 1-channel reference student, live teacher (the adapter path)."""
    require_or_skip("onnxruntime")
    base = tmp_path_factory.mktemp("gray")
    root = make_image_folder(base / "data")
    config = tiny_config(root, base / "out", student={"channels": 1}, distill={"teacher_cache": False})
    code = main(["run", str(write_config(base / "config.yaml", config))])
    return {"code": code, "out": base / "out", "root": root}


@pytest.mark.slow
def test_one_channel_student_trains_and_its_checkpoints_say_so(gray_run):
    assert gray_run["code"] == 0
    out = gray_run["out"]
    assert read_meta(out / "teacher")["channels"] == 3
    for role in ("baseline", "distilled"):
        meta = read_meta(out / role)
        assert meta["channels"] == 1 and meta["architecture"]["args"]["in_channels"] == 1
        assert meta["mean"] == list(normalization(1)[0]) and meta["std"] == list(normalization(1)[1])
    results = json.loads((out / "results.json").read_text())
    students = [row for row in results["models"] if row["role"] != "teacher"]
    assert students and all(row["params"] == 4 * 8 * 8 * 2 + 2 + 4 * 9 + 4 + 8 for row in students)


@pytest.mark.slow
def test_onnx_metadata_and_predict_carry_one_channel(gray_run, tmp_path, capsys):
    from kdistill.deploy.onnx_model import read_contract

    onnx_path = gray_run["out"] / "distilled" / "model.onnx"
    assert read_contract(onnx_path)["channels"] == 1
    rgb, gray = tmp_path / "rgb.png", tmp_path / "gray.png"
    pixels = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels, mode="RGB").save(rgb)
    Image.fromarray(pixels[..., 0], mode="L").save(gray)
    for model in (gray_run["out"] / "distilled", onnx_path):
        assert main(["predict", "--checkpoint", str(model), str(rgb), str(gray), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert [row["file"] for row in result["predictions"]] == [str(rgb), str(gray)]
        assert not result["unreadable"]
