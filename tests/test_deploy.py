"""``deploy_form``: the reference student's inference rewrite (BatchNorm folded, space-to-depth
convolution, max over window positions, Mul + ReduceSum classifier) computes what the original
computes in eval mode, in PyTorch and through ONNX Runtime; it leaves the original alone, and
other models come back as they are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import require_or_skip
from kdistill.models import build_model, deploy_form
from kdistill.models.reference.deploy_form import DeployedReferenceStudent

TOLERANCE = 1e-5  # max |logit difference|: float32 reordering noise is ~1e-7


def student(in_channels: int = 3, classes: int = 2, size: int = 32, width: int = 4) -> nn.Module:
    """A reference student with a negative BatchNorm gamma, non-zero beta and non-trivial running stats."""
    torch.manual_seed(in_channels * 1000 + classes * 100 + size + width)
    model = build_model("reference_student", classes, input_size=size, in_channels=in_channels, width=width)
    batchnorm = model.features[1]
    with torch.no_grad():
        batchnorm.weight.uniform_(0.5, 2.0)
        batchnorm.weight[1] = -1.3  # a decreasing channel: max pooling must still see BatchNorm's output
        batchnorm.bias.uniform_(-0.5, 0.5)
        batchnorm.running_mean.uniform_(-0.5, 0.5)
        batchnorm.running_var.uniform_(0.3, 3.0)
    return model.eval()


def inputs(in_channels: int, size: int) -> dict[str, torch.Tensor]:
    """Random images, and images whose pooling windows hold exact ties (constant regions)."""
    generator = torch.Generator().manual_seed(size)
    shape = (3, in_channels, size, size)
    blocks = torch.randn(3, in_channels, size // 4 or 1, size // 4 or 1, generator=generator)
    return {"random": torch.randn(shape, generator=generator),
            "zeros": torch.zeros(shape),
            "constant": torch.full(shape, 0.7),
            "piecewise constant": nn.functional.interpolate(blocks, size=size, mode="nearest")}


CONFIGS = [(1, 2, 8, 4), (3, 5, 8, 4), (1, 5, 32, 4), (3, 2, 32, 4), (3, 2, 32, 6), (3, 2, 224, 4),
           (1, 5, 224, 4)]


@pytest.mark.parametrize("in_channels,classes,size,width", CONFIGS)
def test_deploy_form_equals_original(in_channels, classes, size, width):
    """Logits within 1e-5 of the eval-mode original on random inputs and on inputs with ties."""
    model = student(in_channels, classes, size, width)
    deployed = deploy_form(model)
    assert isinstance(deployed, DeployedReferenceStudent) and not deployed.training
    with torch.no_grad():
        for name, x in inputs(in_channels, size).items():
            expected, got = model(x), deployed(x)
            assert got.shape == expected.shape == (3, classes)
            assert (got - expected).abs().max() <= TOLERANCE, name


def test_deploy_form_replaces_the_full_resolution_layers():
    """One stride-2 4x4 convolution with 4 x width outputs; no BatchNorm or pooling modules left."""
    deployed = deploy_form(student(3, 2, 32))
    kinds = {type(m) for m in deployed.modules()}
    assert not kinds & {nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU, nn.Linear}
    assert deployed.conv.weight.shape == (16, 3, 4, 4) and deployed.conv.stride == (2, 2)


def test_deploy_form_leaves_the_original_unchanged():
    """Same parameters, buffers and mode afterwards, and no storage shared with the deploy form."""
    model = student().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = deploy_form(model)
    assert model.training and not deployed.training
    with torch.no_grad():
        deployed(torch.randn(2, 3, 32, 32))
        for tensor in deployed.state_dict().values():
            tensor.fill_(0.0)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["tiny_cnn_d2", "tiny_cnn_d3"])
def test_other_models_come_back_unchanged(name):
    """Not a reference student: the very same module, state and mode untouched."""
    model = build_model(name, 2, input_size=32).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert deploy_form(model) is model and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    plain = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    assert deploy_form(plain) is plain


@pytest.mark.parametrize("in_channels,classes,size", [(3, 2, 32), (1, 5, 8), (3, 2, 224)])
def test_onnx_round_trip_of_the_deploy_form(in_channels, classes, size, tmp_path):
    """torch_to_onnx of the deploy form, run by ONNX Runtime at batch 1 and 3, gives the original's
    logits within 1e-5; the graph has no BatchNorm, pooling or matrix product left."""
    require_or_skip("onnxruntime")
    import onnx

    from kdistill.deploy.export import torch_to_onnx
    from kdistill.deploy.onnx_model import INPUT_NAME, open_session

    model = student(in_channels, classes, size)
    path = tmp_path / "deployed.onnx"
    torch_to_onnx(deploy_form(model), in_channels, size, path)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Conv", "Max", "ReduceSum"} <= ops and not ops & {"BatchNormalization", "MaxPool", "Gemm", "MatMul"}
    session = open_session(path)
    for name, x in inputs(in_channels, size).items():
        for batch in (1, 3):
            with torch.no_grad():
                expected = model(x[:batch]).numpy()
            got = session.run(None, {INPUT_NAME: x[:batch].numpy()})[0]
            assert got.shape == expected.shape
            assert np.abs(got - expected).max() <= TOLERANCE, (name, batch)
