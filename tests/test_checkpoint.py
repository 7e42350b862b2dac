"""Checkpoints: a directory with model.safetensors + model.json that rebuilds the exact model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import leftover_temp_files
from kdistill.models.checkpoint import architecture, load_checkpoint, save_checkpoint
from kdistill.data.transforms import normalization
from kdistill.errors import CheckpointError
from kdistill.models import build_model


def trained_looking_model(name: str = "tiny_cnn_d2", **args) -> torch.nn.Module:
    """Random weights and non-default BN statistics (buffers must round-trip too)."""
    torch.manual_seed(0)
    model = build_model(name, 2, input_size=16, **args).train()
    with torch.no_grad():
        model(torch.randn(8, 3, 16, 16) * 3)
    return model.eval()


def meta_for(name: str, args: dict) -> dict:
    mean, std = normalization(3)
    return {"architecture": architecture(name, 2, 16, 3, args), "classes": ["NORMAL", "PNEUMONIA"],
            "positive_class": "PNEUMONIA", "input_size": 16, "channels": 3, "mean": list(mean),
            "std": list(std), "threshold": 0.5, "training": {"epochs": 1}}


@pytest.mark.parametrize("name,args", [("tiny_cnn_d2", {"width": 4}), ("reference_student", {})])
def test_round_trip_gives_identical_logits(tmp_path, name, args):
    """save -> load_checkpoint rebuilds the model from model.json alone: bit-identical logits."""
    model = trained_looking_model(name, **args)
    save_checkpoint(tmp_path / "ckpt", model, meta_for(name, args))
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert meta["classes"] == ["NORMAL", "PNEUMONIA"] and meta["threshold"] == 0.5
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.json", "model.safetensors"]


def test_checkpoint_loads_in_a_fresh_process(tmp_path):
    """Another Python process with only the directory gets the same logits (no pickle, no state)."""
    model = trained_looking_model("tiny_cnn_d2", width=4)
    save_checkpoint(tmp_path / "ckpt", model, meta_for("tiny_cnn_d2", {"width": 4}))
    x = torch.randn(4, 3, 16, 16)
    save_file({"x": x}, str(tmp_path / "input.safetensors"))
    script = (
        "import sys, torch\n"
        "from safetensors.torch import load_file, save_file\n"
        "from kdistill.models.checkpoint import load_checkpoint\n"
        "model, _ = load_checkpoint(sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    y = model(load_file(sys.argv[2])['x'])\n"
        "save_file({'y': y.contiguous()}, sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "ckpt"), str(tmp_path / "input.safetensors"),
                    str(tmp_path / "output.safetensors")], check=True, timeout=120)
    with torch.no_grad():
        assert torch.equal(load_file(str(tmp_path / "output.safetensors"))["y"], model(x))


def test_weights_file_is_safetensors_not_pickle(tmp_path):
    """model.safetensors starts with an 8-byte header length and a JSON header (no pickle opcodes)."""
    model = trained_looking_model("reference_student")
    save_checkpoint(tmp_path / "ckpt", model, meta_for("reference_student", {}))
    raw = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert set(model.state_dict()) <= set(header)
    assert not raw.startswith(b"\x80")  # pickle protocol marker; torch.save zips start with PK
    assert not raw.startswith(b"PK")


def test_overwriting_a_checkpoint_leaves_no_temporary_files(tmp_path):
    """Saving over an existing checkpoint replaces it whole; no .tmp/.old directories remain."""
    meta = meta_for("reference_student", {})
    save_checkpoint(tmp_path / "ckpt", trained_looking_model("reference_student"), meta)
    second = build_model("reference_student", 2, input_size=16).eval()
    save_checkpoint(tmp_path / "ckpt", second, meta)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), second(x))
    assert leftover_temp_files(tmp_path) == []


def test_incomplete_checkpoint_is_a_clear_error(tmp_path):
    """A directory without weights or metadata raises CheckpointError naming the directory."""
    save_checkpoint(tmp_path / "ckpt", trained_looking_model("reference_student"),
                    meta_for("reference_student", {}))
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ckpt: no model.safetensors"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not a kdistill checkpoint"):
        load_checkpoint(Path(tmp_path / "nothing"))
