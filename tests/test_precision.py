"""Mixed precision on the CPU: bf16 autocast trains (finite losses, float32 weights kept); fp16 and
device: cuda are refused with the key named where they cannot run."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from kdistill.models.checkpoint import architecture
from kdistill.config import DataConfig, TrainConfig, load_config
from kdistill.data import load_dataset
from kdistill.distill import CachedTeacher, LiveTeacher, build_method
from kdistill.errors import ConfigError
from kdistill.models import build_model
from kdistill.engine.precision import resolve_device
from kdistill.engine.loop import fit


@pytest.fixture
def data(image_root):
    return load_dataset(DataConfig(root=str(image_root), input_size=16, val_fraction=0.25, test_fraction=0.25))


def distil(data, out, precision: str, live: bool):
    """Two epochs distilling a tiny CNN; returns the dtypes of the student's and teacher's logits."""
    torch.manual_seed(0)
    teacher = build_model("tiny_cnn_d2", 2, input_size=16, width=4)
    mean, std = data.normalization
    outputs = LiveTeacher(teacher) if live else CachedTeacher(teacher, data.train, channels=3, mean=mean, std=std)
    kd = build_method("kd", alpha=0.5, temperature=4.0)
    seen = []

    def recording(batch, student, teacher_outputs):
        seen.append((student(batch.images).dtype, teacher_outputs(batch).dtype))
        return kd(batch, student, teacher_outputs)

    student = build_model("tiny_cnn_d2", 2, input_size=16, width=4)
    meta = {"architecture": architecture("tiny_cnn_d2", 2, 16, 3, {"width": 4})}
    result = fit(student, recording, data, name="distilled", checkpoint_dir=out / "ckpt",
                 checkpoint_meta=meta, resume_dir=out / "resume", teacher=outputs,
                 train=TrainConfig(epochs=2, batch_size=8, lr=0.01), progress=False, device="cpu",
                 precision=precision)
    return result, seen


def test_bf16_autocast_on_cpu_trains_with_finite_loss(data, tmp_path):
    """bf16: the student and the live teacher both run in bfloat16 inside the step; the losses are
    finite and the saved weights are float32."""
    result, seen = distil(data, tmp_path, "bf16", live=True)
    assert {dtypes for dtypes in seen} == {(torch.bfloat16, torch.bfloat16)}
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in result.history)
    weights = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.float32}


def test_fp32_is_untouched_by_autocast(data, tmp_path):
    _, seen = distil(data, tmp_path, "fp32", live=False)
    assert {dtypes for dtypes in seen} == {(torch.float32, torch.float32)}


def test_fp16_on_cpu_is_refused(data, tmp_path):
    with pytest.raises(ConfigError, match="precision: fp16 needs a CUDA device"):
        distil(data, tmp_path, "fp16", live=False)


def test_config_keys_are_checked(tmp_path):
    config = load_config(None, ["data.dataset=digits", "precision=bf16", "device=cpu"])
    assert (config.precision, config.device) == ("bf16", "cpu")
    with pytest.raises(ConfigError, match="precision: 'fp8'"):
        load_config(None, ["data.dataset=digits", "precision=fp8"])
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="device: cuda"):
            resolve_device("cuda")
