"""Teacher fine-tuning modes: which parameters ``partial`` trains, that the frozen part (weights and
BatchNorm statistics) stays as loaded, and that a missing weights package stops a run before it
writes anything."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_image_folder, tiny_config, write_config
from kdistill.cli import main
from kdistill.errors import ConfigError
from kdistill.models import build_model
from kdistill.models.stages import partial_trainable, stage_paths


@pytest.fixture(scope="module")
def resnet():
    return build_model("resnet18", 2)


def test_resnet_stages_and_last_blocks(resnet):
    assert stage_paths(resnet) == ["layer1", "layer2", "layer3", "layer4"]
    one = partial_trainable(resnet, 1)
    assert {name.split(".")[0] for name in one} == {"layer4", "fc"}
    two = partial_trainable(resnet, 2)
    assert {name.split(".")[0] for name in two} == {"layer3", "layer4", "fc"}


def test_prefixes_train_those_modules_and_the_head(resnet):
    names = partial_trainable(resnet, prefixes=["layer3.1"])
    assert names and all(n.startswith(("layer3.1.", "fc.")) for n in names)
    assert any(n.startswith("fc.") for n in names)


@pytest.mark.parametrize("blocks, prefixes, key", [(5, (), "trainable_blocks"), (1, ["layer9"], "trainable_prefixes")])
def test_bad_partial_settings_name_the_key(resnet, blocks, prefixes, key):
    with pytest.raises(ConfigError, match=f"teacher.{key}"):
        partial_trainable(resnet, blocks, prefixes)


def test_efficientnet_stages_are_its_blocks():
    pytest.importorskip("timm")
    model = build_model("timm:tf_efficientnet_lite0", 2)
    assert stage_paths(model) == [f"blocks.{i}" for i in range(7)]
    names = partial_trainable(model, 2)
    assert names[0].startswith("blocks.5.") and names[-1] == "classifier.bias"
    assert not any(n.startswith(("blocks.4.", "conv_stem", "bn1")) for n in names)


def test_other_models_use_top_level_children_before_the_head():
    model = build_model("tiny_cnn_d3", 2, input_size=16)
    assert stage_paths(model) == ["features"]


def test_partial_teacher_keeps_the_frozen_part_as_loaded(tmp_path):
    """1 epoch of partial fine-tuning of a ResNet-18 (last stage): layer1..3, the stem and their
    BatchNorm running statistics are bit-identical to the starting weights; layer4 and fc moved."""
    root = make_image_folder(tmp_path / "data")
    config = tiny_config(root, tmp_path / "out", teacher={
        "model": "resnet18", "model_args": {}, "mode": "partial", "trainable_blocks": 1,
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.01}})
    assert main(["train", str(write_config(tmp_path / "c.yaml", config)), "--role", "teacher"]) == 0
    torch.manual_seed(0)  # the seed the teacher was built with: the same starting weights
    start = build_model("resnet18", 2, input_size=16).state_dict()
    trained = load_file(str(tmp_path / "out" / "teacher" / "model.safetensors"))
    frozen = [k for k in start if not k.startswith(("layer4.", "fc."))]
    assert any(k.endswith("running_mean") for k in frozen)
    changed = [k for k in frozen if not torch.equal(start[k], trained[k])]
    assert not changed, changed[:5]
    assert not torch.equal(start["fc.weight"], trained["fc.weight"])
    assert not torch.equal(start["layer4.1.conv2.weight"], trained["layer4.1.conv2.weight"])
    meta = json.loads((tmp_path / "out" / "teacher" / "model.json").read_text())
    assert meta["training"]["mode"] == "partial" and meta["training"]["trainable_blocks"] == 1


def test_missing_weights_package_stops_the_run_before_writing(tmp_path, monkeypatch, capsys):
    """The packaged teacher's pip package is named before config.yaml or splits.json exist."""
    from kdistill.models import weights

    name = "timm:tf_efficientnet_lite0"
    missing = dataclasses.replace(weights.PACKAGED[name], module="kdistill_no_such_weights_package")
    monkeypatch.setitem(weights.PACKAGED, name, missing)
    root = make_image_folder(tmp_path / "data")
    out = tmp_path / "out"
    config = tiny_config(root, out, teacher={"model": name, "model_args": {}, "pretrained": True})
    assert main(["run", str(write_config(tmp_path / "c.yaml", config))]) != 0
    assert missing.pip_name in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
