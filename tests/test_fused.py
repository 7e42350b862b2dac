"""The fused CPU training block (BatchNorm + ReLU + 2x2 max pooling) computes what the three layers do.

Compared against PyTorch's own layers on the same input: the output, every parameter's gradient
and the BatchNorm buffers after the step. Tolerances are float32 rounding: the fused block sums in
a different order (batch statistics from a Gram matrix, gradients from the closed form).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdistill.models.reference.student as reference_student
from kdistill.models import build_model
from kdistill.models.reference.fused import bn_relu_maxpool2, can_fuse


def _layers(in_channels: int, gamma: list[float], momentum: float | None = 0.1):
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, len(gamma), 3, padding=1)
    batchnorm = nn.BatchNorm2d(len(gamma), momentum=momentum)
    with torch.no_grad():
        batchnorm.weight.copy_(torch.tensor(gamma))
        batchnorm.bias.uniform_(-0.5, 0.5)
        batchnorm.running_mean.uniform_(-1, 1)
    return conv, batchnorm


def _step(conv, batchnorm, x, upstream, fused: bool):
    z = conv(x)
    out = bn_relu_maxpool2(z, batchnorm) if fused else F.max_pool2d(F.relu(batchnorm(z)), 2)
    (out * upstream).sum().backward()
    return out


def _compare(x, gamma, momentum=0.1, steps=2):
    """Run plain and fused side by side for ``steps`` steps; return the largest relative differences."""
    conv, batchnorm = _layers(x.shape[1], gamma, momentum)
    conv_f, batchnorm_f = copy.deepcopy(conv), copy.deepcopy(batchnorm)
    worst = {}
    for step in range(steps):
        upstream = torch.randn(x.shape[0], len(gamma), x.shape[2] // 2, x.shape[3] // 2,
                               generator=torch.Generator().manual_seed(step))
        for module in (conv, batchnorm, conv_f, batchnorm_f):
            module.zero_grad()
        plain = _step(conv, batchnorm, x, upstream, fused=False)
        fused = _step(conv_f, batchnorm_f, x.contiguous(memory_format=torch.channels_last), upstream, fused=True)
        pairs = {"out": (plain, fused),
                 "conv.weight.grad": (conv.weight.grad, conv_f.weight.grad),
                 "bn.weight.grad": (batchnorm.weight.grad, batchnorm_f.weight.grad),
                 "bn.bias.grad": (batchnorm.bias.grad, batchnorm_f.bias.grad),
                 "running_mean": (batchnorm.running_mean, batchnorm_f.running_mean),
                 "running_var": (batchnorm.running_var, batchnorm_f.running_var)}
        for name, (a, b) in pairs.items():
            relative = ((a - b).abs().max() / a.abs().max().clamp_min(1e-6)).item()
            worst[name] = max(worst.get(name, 0.0), relative)
        assert torch.equal(batchnorm.num_batches_tracked, batchnorm_f.num_batches_tracked)
    return worst


@pytest.mark.parametrize("in_channels,gamma,size", [
    (3, [1.3, 0.7, 0.5, 2.0], 32),
    (3, [1.3, -0.7, 0.5, -2.0], 32),   # negative scale: the block pools the minimum there
    (1, [0.9, 1.1], 8),
    (3, [1.0, -1.0, 0.3, 0.8, 1.2, -0.1], 224),
])
def test_fused_block_matches_batchnorm_relu_maxpool(in_channels, gamma, size):
    x = torch.randn(3, in_channels, size, size, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    worst = _compare(x, gamma)
    assert max(worst.values()) < 1e-4, worst


def test_cumulative_running_average_when_momentum_is_none():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    worst = _compare(x, [1.0, 2.0, -0.5, 0.7], momentum=None, steps=3)
    assert max(worst.values()) < 1e-4, worst


def test_ties_in_pooling_windows_give_the_same_gradients():
    """A constant region (black border of an X-ray) makes every window there a tie.

    Tied positions see identical input windows, so which one takes the gradient does not change
    any parameter's gradient; the fused block picks one per window, never several.
    """
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    x[:, :, :, :12] = -1.5       # a constant band, ties in every window inside it
    x[:, :, :8, :] = 0.0         # and an all-zero band, the same value as the zero padding
    worst = _compare(x, [1.2, -0.8, 0.6, 1.0])
    assert max(worst.values()) < 1e-4, worst


def test_only_cpu_float32_training_with_plain_batchnorm_is_fused():
    batchnorm = nn.BatchNorm2d(4)
    z = torch.randn(2, 4, 8, 8)
    assert can_fuse(z, batchnorm, training=True)
    assert not can_fuse(z, batchnorm, training=False)                     # eval: running statistics
    assert not can_fuse(z.bfloat16(), batchnorm, training=True)          # autocast keeps PyTorch's path
    assert not can_fuse(torch.randn(2, 4, 7, 8), batchnorm, training=True)  # odd size
    assert not can_fuse(z, nn.SyncBatchNorm(4), training=True)           # statistics across processes
    assert not can_fuse(z, nn.BatchNorm2d(4, track_running_stats=False), training=True)


def test_reference_student_trains_the_same_fused_or_not(monkeypatch):
    """Three SGD steps of the whole student through its forward(), fused versus PyTorch's layers.

    SGD, not AdamW: the conv bias before BatchNorm has an exact gradient of zero, so both paths hand
    it rounding noise, which AdamW divides by its own magnitude into full-size steps of random sign.
    """
    torch.manual_seed(0)
    plain = build_model("reference_student", 3, input_size=32)
    fused = copy.deepcopy(plain)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    results = {}
    for name, model, fuse in (("plain", plain, False), ("fused", fused, True)):
        monkeypatch.setattr(reference_student, "can_fuse", can_fuse if fuse else (lambda *args: False))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), targets).backward()
            optimizer.step()
        results[name] = model.state_dict()
    for key, value in results["plain"].items():
        assert torch.allclose(value.float(), results["fused"][key].float(), rtol=1e-4, atol=1e-5), key


def test_a_second_backward_pass_is_refused_not_wrong():
    """The backward pass reuses the block's input for its gradient, so it cannot run twice."""
    conv, batchnorm = _layers(3, [1.0, 1.0])
    out = bn_relu_maxpool2(conv(torch.randn(2, 3, 8, 8)), batchnorm)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        out.sum().backward()
