"""The batch transforms: horizontal flips and normalization."""

from __future__ import annotations

import pytest
import torch

from kdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD, apply_flips, to_model_input


@pytest.mark.parametrize("shape", [(5, 1, 6, 7), (4, 3, 8, 8)])
def test_flips_mirror_exactly_the_chosen_images(shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    before = images.clone()
    flipped = torch.tensor([True, False, True, True, False][: shape[0]])
    out = apply_flips(images, flipped)
    for i, chosen in enumerate(flipped.tolist()):
        assert torch.equal(out[i], images[i].flip(-1) if chosen else images[i])
    assert torch.equal(images, before)  # the input is left as it was
    assert apply_flips(images, torch.zeros(shape[0], dtype=torch.bool)) is images


def test_normalization_is_imagenet_on_a_0_1_scale():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    x = to_model_input(images, 3, IMAGENET_MEAN, IMAGENET_STD)
    expected = (images.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert x.shape == (1, 3, 1, 3)
    assert torch.allclose(x, expected, atol=1e-6)
