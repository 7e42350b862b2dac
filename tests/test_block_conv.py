"""Training the reference student on raw 2x2 pixel blocks computes what the ordinary model computes.

The block path (kdistill/models/reference/pixel_blocks.py, kdistill/models/reference/block_conv.py and
``bn_relu_maxpool2_blocks``) folds normalization into the convolution, rewrites it on the block
grid and pools over channel groups. Each test runs it side by side with PyTorch's own layers in
float64 on the normalized images and compares the logits, every parameter's gradient and the
BatchNorm buffers, over several optimizer steps. The reference is float64 because PyTorch's own
float32 layers are further from it than the block path: at 224 px, 2.9e-4 vs 5.9e-5 relative
error in the convolution's weight gradient (a sum over every pixel of the batch).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from kdistill.data import DatasetBundle, ImageSplit
from kdistill.models.reference.pixel_blocks import BlockImages, can_use_blocks, to_blocks
from kdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalization, to_model_input
from kdistill.distill import CachedTeacher
from kdistill.distill.teacher import LiveTeacher
from kdistill.models import build_model
from kdistill.models.reference.fused import bn_relu_maxpool2_blocks
from kdistill.engine.loop import StepRunner, training_input

GRAY = normalization(1)


def _plain_forward(model, x):
    """The reference student through PyTorch's own layers (no fused or block path)."""
    conv, batchnorm, _, _ = model.features
    return model.classifier(torch.flatten(F.max_pool2d(F.relu(batchnorm(conv(x))), 2), 1))


def _images(count, source_channels, size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, source_channels, size, size), dtype=torch.uint8, generator=generator)
    images[3] //= 4                    # a dark image, values far from the middle
    images[0] = 9                      # a constant image: every pooling window is a four-way tie
    images[1, :, : size // 2] = 200    # and a constant half
    images[2, :, :, 1::2] = images[2, :, :, 0::2]  # pairs of equal columns: two-way ties
    return images


def _compare(source_channels=1, channels=3, size=16, gamma=None, steps=3, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    torch.manual_seed(0)
    blocked = build_model("reference_student", 3, input_size=size, in_channels=channels)
    if gamma is not None:
        with torch.no_grad():
            blocked.features[1].weight.copy_(torch.tensor(gamma))
    plain = copy.deepcopy(blocked).double()
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.05)
    opt_blocked = torch.optim.SGD(blocked.parameters(), lr=0.05)
    worst = {}
    for step in range(steps):
        raw = _images(6, source_channels, size, seed=step)
        labels = torch.arange(6) % 3
        a = _plain_forward(plain, to_model_input(raw, channels, mean, std).double())
        b = blocked(to_blocks(raw, channels, mean, std))
        pairs = {"logits": (a, b)}
        for model, logits, opt in ((plain, a, opt_plain), (blocked, b, opt_blocked)):
            opt.zero_grad()
            F.cross_entropy(logits, labels).backward()
        for (name, p), q in zip(plain.named_parameters(), blocked.parameters()):
            pairs[f"{name}.grad"] = (p.grad, q.grad)
        bn_plain, bn_blocked = plain.features[1], blocked.features[1]
        pairs["running_mean"] = (bn_plain.running_mean, bn_blocked.running_mean)
        pairs["running_var"] = (bn_plain.running_var, bn_blocked.running_var)
        for name, (x, y) in pairs.items():
            # The convolution's bias has an exact gradient of 0 (BatchNorm removes any constant):
            # its rounding noise is measured against the weight gradient.
            reference = pairs["features.0.weight.grad"][0] if name == "features.0.bias.grad" else x
            scale = max(reference.abs().max().item(), 1e-3)
            worst[name] = max(worst.get(name, 0.0), (x - y.double()).abs().max().item() / scale)
        opt_plain.step()
        opt_blocked.step()
    return worst


@pytest.mark.parametrize("source_channels, channels, size", [
    (1, 3, 16),   # grayscale X-rays fed to an RGB model: the reference case
    (1, 3, 30),   # an odd number of blocks per side
    (3, 3, 12),   # colour images
    (1, 1, 8),    # a grayscale model
    (1, 3, 4),    # the smallest: every block is on the border
])
def test_block_path_matches_plain_layers(source_channels, channels, size):
    mean, std = normalization(channels)
    worst = _compare(source_channels, channels, size, mean=mean, std=std)
    assert max(worst.values()) < 1e-4, worst


def test_block_path_with_negative_and_zero_gamma():
    # Negative scale turns max pooling into min pooling of z; zero scale makes a channel constant.
    worst = _compare(gamma=[1.5, -0.7, 0.0, -2.0])
    assert max(worst.values()) < 1e-4, worst


def test_block_path_at_224():
    worst = _compare(size=224, steps=1)  # later steps add the float64 trajectory's own drift
    assert max(worst.values()) < 1e-4, worst


def test_blocks_stand_for_the_normalized_images():
    raw = _images(4, 1, 10)
    blocks = to_blocks(raw, 3, IMAGENET_MEAN, IMAGENET_STD)
    assert blocks.pixels.shape == (4, 4, 5, 5)
    assert torch.equal(blocks.pixels, F.pixel_unshuffle(raw.float(), 2) - 128)
    assert torch.equal(blocks.to_images(), to_model_input(raw, 3, IMAGENET_MEAN, IMAGENET_STD))


def test_eval_mode_falls_back_to_the_ordinary_model():
    model = build_model("reference_student", 2, input_size=8).eval()
    raw = _images(4, 1, 8)
    expected = model(to_model_input(raw, 3, IMAGENET_MEAN, IMAGENET_STD))
    assert torch.allclose(model(to_blocks(raw, 3, IMAGENET_MEAN, IMAGENET_STD)), expected, atol=1e-6)


def test_second_backward_is_refused():
    model = build_model("reference_student", 2, input_size=8)
    loss = model(to_blocks(_images(4, 1, 8), 3, IMAGENET_MEAN, IMAGENET_STD)).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


def _bundle(size=8, source_channels=1, channels=3):
    images = _images(4, source_channels, size)
    split = ImageSplit(images, torch.tensor([0, 1, 0, 1]), list("abcd"), list("abcd"))
    return DatasetBundle(["a", "b"], "b", split, split, split, size, channels)


def _uses_blocks(model, teacher, data, runner=None) -> bool:
    convert = training_input(model, teacher, data, runner)
    return convert is not None and isinstance(convert(data.train.images[:2]), BlockImages)


def test_training_loop_uses_blocks_only_where_they_apply():
    student = build_model("reference_student", 2, input_size=8)
    data = _bundle()
    assert _uses_blocks(student, None, data)
    assert _uses_blocks(student, object.__new__(CachedTeacher), data)
    # A live teacher reads the images; other models and other precisions take ordinary batches.
    assert not _uses_blocks(student, LiveTeacher(build_model("tiny_cnn_d2", 2)), data)
    assert training_input(build_model("tiny_cnn_d2", 2), None, data) is None
    assert not _uses_blocks(student, None, data, StepRunner(torch.device("cpu"), "bf16", None))
    assert not _uses_blocks(student, None, _bundle(size=6, source_channels=3, channels=1))


def test_can_use_blocks():
    assert can_use_blocks(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), 3)
    assert can_use_blocks(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 3)
    assert not can_use_blocks(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 1)  # colour to gray: a mean first
    assert not can_use_blocks(torch.zeros(1, 1, 8, 7, dtype=torch.uint8), 3)
    assert not can_use_blocks(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), 3)


def test_block_images_length():
    assert len(BlockImages(torch.zeros(5, 4, 2, 2), 3, IMAGENET_MEAN, IMAGENET_STD)) == 5


def _blocks_to_full(z_blocks: torch.Tensor) -> torch.Tensor:
    """``[N, 4*C, h, w]`` with channels (row in block, column in block, channel) -> ``[N, C, 2h, 2w]``."""
    n, c4, h, w = z_blocks.shape
    return z_blocks.view(n, 2, 2, c4 // 4, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c4 // 4, 2 * h, 2 * w)


@pytest.mark.parametrize("gamma", [[1.0, 0.5, 2.0, 1.5], [-1.0, 0.5, -2.0, 1.5]])
def test_ties_send_the_gradient_where_pytorch_pooling_sends_it(gamma):
    # Values on a coarse grid tie often; PyTorch's pooling gives a tied window's gradient to the
    # first position in row-major order, and so must the block path (checked on the input's gradient).
    generator = torch.Generator().manual_seed(0)
    z_blocks = torch.randint(-2, 3, (3, 16, 5, 6), generator=generator).float()
    upstream = torch.randn(3, 4, 5, 6, generator=generator)
    batchnorm = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        batchnorm.weight.copy_(torch.tensor(gamma))
    plain_bn = copy.deepcopy(batchnorm).double()
    z_full = _blocks_to_full(z_blocks).double().requires_grad_()
    (F.max_pool2d(F.relu(plain_bn(z_full)), 2) * upstream).sum().backward()
    z_fused = z_blocks.clone().requires_grad_()
    (bn_relu_maxpool2_blocks(z_fused.clone(), batchnorm) * upstream).sum().backward()
    assert torch.allclose(_blocks_to_full(z_fused.grad).double(), z_full.grad, atol=1e-5)
