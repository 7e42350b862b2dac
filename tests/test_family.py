"""kdistill's student family (kd_mobile, kd_plain): sizes counted by hand, 1 and 3 channels,
checkpoint round trip from model.json, forward hooks, ONNX export parity and int8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image_folder, require_or_skip, tiny_config, write_config
from kdistill.cli import main
from kdistill.models.size import count_parameters
from kdistill.models import build_model
from kdistill.models.checkpoint import architecture, load_checkpoint, save_checkpoint
from kdistill.models.family import InvertedResidual


def test_plain_member_has_the_hand_counted_parameters():
    # stem conv 1*2*9 + BN 2*2 = 22; stride-2 conv 2*4*9 + BN 8 = 80; stride-1 conv 4*4*9 + BN 8 = 152;
    # classifier 4*2 + 2 = 10.
    model = build_model("kd_plain", 2, in_channels=1, width=2, depth=1, stem_stride=2, se=False)
    assert count_parameters(model) == 22 + 80 + 152 + 10


def test_mobile_member_with_se_has_the_hand_counted_parameters():
    # stem 22. Block 2->4 (hidden 4): expand 2*4 + 8, depthwise 4*9 + 8, SE (hidden 4) 4*4+4 + 4*4+4,
    # project 4*4 + 8 = 124. Block 4->4 (hidden 8): expand 4*8 + 16, depthwise 8*9 + 16,
    # SE (hidden 4) 8*4+4 + 4*8+8, project 8*4 + 8 = 252. Classifier 10.
    model = build_model("kd_mobile", 2, in_channels=1, width=2, depth=1, stem_stride=2, expansion=2, se=True)
    assert count_parameters(model) == 22 + 124 + 252 + 10


@pytest.mark.parametrize("name", ["kd_mobile", "kd_plain"])
@pytest.mark.parametrize("channels", [1, 3])
def test_members_take_one_or_three_channels_at_any_input_size(name, channels):
    model = build_model(name, 3, in_channels=channels, width=4, depth=2, stem_stride=2, se=True).eval()
    sizes = {count_parameters(build_model(name, 3, input_size=s, in_channels=channels, width=4, depth=2))
             for s in (32, 224)}
    with torch.no_grad():
        assert model(torch.randn(2, channels, 32, 32)).shape == (2, 3)
        assert model(torch.randn(1, channels, 48, 40)).shape == (1, 3)
    assert len(sizes) == 1  # global pooling: the size does not depend on the input


def test_the_family_spans_ten_thousand_to_a_million_parameters():
    smallest = build_model("kd_plain", 2, in_channels=1, width=4, depth=2)
    largest = build_model("kd_mobile", 2, in_channels=3, width=16, depth=4, se=True)
    assert count_parameters(smallest) <= 10_000 and count_parameters(largest) >= 1_000_000


def test_a_stride_one_block_adds_its_input_back():
    block = InvertedResidual(4, 4, stride=1, expansion=2, se=False).eval()
    torch.nn.init.zeros_(block.block[-1].weight)  # the projection's BatchNorm scale: branch output 0
    torch.nn.init.zeros_(block.block[-1].bias)
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        assert torch.equal(block(x), x)


def test_bad_knobs_are_type_errors_naming_the_knob():
    with pytest.raises(TypeError, match="stem_stride"):
        build_model("kd_mobile", 2, stem_stride=3)
    with pytest.raises(TypeError, match="width"):
        build_model("kd_plain", 2, width=0)


def test_checkpoint_rebuilds_the_member_from_model_json(tmp_path: Path):
    args = {"width": 4, "depth": 2, "stem_stride": 4, "expansion": 3, "se": True}
    model = build_model("kd_mobile", 2, input_size=32, in_channels=1, **args).eval()
    meta = {"architecture": architecture("kd_mobile", 2, 32, 1, args), "classes": ["a", "b"],
            "input_size": 32, "channels": 1, "mean": [0.5], "std": [0.25]}
    save_checkpoint(tmp_path / "ckpt", model, meta)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_forward_hooks_fire_on_inner_modules():
    model = build_model("kd_mobile", 2, width=4, depth=2, se=True)
    seen = {}

    def record(path: str):
        def hook(module, inputs, output):
            seen[path] = output.shape  # returns None: the output is left as it is
        return hook

    for path in ("stem", "stages.0", "stages.1.1.block.2"):  # the last: a squeeze-excitation
        model.get_submodule(path).register_forward_hook(record(path))
    model(torch.randn(2, 3, 32, 32))
    assert seen == {"stem": (2, 4, 16, 16), "stages.0": (2, 8, 8, 8), "stages.1.1.block.2": (2, 64, 4, 4)}


@pytest.mark.parametrize("name", ["kd_mobile", "kd_plain"])
def test_onnx_export_matches_pytorch_and_int8_runs(name, tmp_path: Path):
    require_or_skip("onnxruntime")
    from kdistill.deploy.export import quantize_int8, torch_to_onnx
    from kdistill.deploy.onnx_model import INPUT_NAME, open_session

    torch.manual_seed(0)
    model = build_model(name, 2, in_channels=1, width=4, depth=2, se=True).eval()
    path = tmp_path / "model.onnx"
    torch_to_onnx(model, 1, 32, path)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    got = open_session(path, 1).run(None, {INPUT_NAME: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    quantize_int8(path, tmp_path / "model.int8.onnx", [x.numpy()])
    int8 = open_session(tmp_path / "model.int8.onnx", 1).run(None, {INPUT_NAME: x.numpy()})[0]
    assert int8.shape == (4, 2) and np.isfinite(int8).all()


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory) -> dict:
    """A tiny teacher trained once, in a run folder the feature-method students below reuse."""
    base = tmp_path_factory.mktemp("family_distill")
    root = make_image_folder(base / "data")
    student = {"model": "kd_mobile", "model_args": {"width": 4, "depth": 2, "se": True}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDISTILL_CACHE_DIR", str(base / "cache"))
        config = tiny_config(root, base / "run", export=False, student=student)
        code = main(["train", str(write_config(base / "c.yaml", config)), "--role", "teacher"])
    assert code == 0
    return {"base": base, "config": config}


@pytest.mark.parametrize("method", ["fitnet", "at", "rkd"])
def test_feature_methods_distill_a_member_through_forward_hooks(trained_teacher, method):
    base = trained_teacher["base"]
    config = {**trained_teacher["config"], "distill": {**trained_teacher["config"]["distill"], "method": method}}
    path = write_config(base / f"{method}.yaml", config)
    assert main(["train", str(path), "--role", "distilled", "--teacher", str(base / "run" / "teacher"),
                 "--out", str(base / method)]) == 0
    meta = json.loads((base / method / "distilled" / "model.json").read_text())
    assert meta["training"]["method"] == method and meta["architecture"]["name"] == "kd_mobile"
