"""Helpers shared by the export, predict and bench tests: a tiny checkpoint and a foreign ONNX file."""

from __future__ import annotations

from pathlib import Path

import torch

from kdistill.models.checkpoint import architecture, save_checkpoint
from kdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kdistill.models import build_model

CLASSES = ["NORMAL", "PNEUMONIA"]


def make_checkpoint(directory: Path, name: str = "reference_student", size: int = 32,
                    threshold: float = 0.5) -> Path:
    """A randomly initialized 2-class checkpoint at ``size`` x ``size`` (BatchNorm stats made non-trivial)."""
    torch.manual_seed(0)
    model = build_model(name, 2, input_size=size)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # exercise BatchNorm folding in the exports
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    meta = {"architecture": architecture(name, 2, size, 3, {}), "classes": CLASSES,
            "positive_class": "PNEUMONIA", "input_size": size, "channels": 3,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "threshold": threshold}
    save_checkpoint(directory, model, meta)
    return directory


def write_foreign_onnx(path: Path) -> Path:
    """A valid ONNX model (Relu on [N, 3, 32, 32]) without kdistill's metadata."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
