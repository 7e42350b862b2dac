"""Views as rows of numbers: replayable draws, exact rendering, the reference transforms as special cases."""

import torch
import torch.nn.functional as F

from kdistill.data import Batch
from kdistill.distill import build_method
from kdistill.distill.registry import BASELINE
from kdistill.data.transforms import apply_flips, normalization, to_model_input
from kdistill.data.views import (ANGLE, FLIP, LAMBDA, MIX, X1, AugmentSpec, draw_views, plain_views,
                                 render_views)

MEAN, STD = normalization(3)
RICH = AugmentSpec(scale=(0.6, 1.0), rotation=7, brightness=0.25, contrast=0.25)


def images(count=6, size=24, channels=3, seed=0):
    return torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def render(x, views, channels=3):
    return render_views(x, views, x, out_size=x.shape[-1], channels=channels, mean=MEAN, std=STD)


def test_draws_replay_from_the_seed_and_differ_across_seeds():
    spec = AugmentSpec(scale=(0.6, 1.0), rotation=7, brightness=0.25, contrast=0.25, mix="cutmix")
    first = draw_views(20, torch.Generator().manual_seed(3), spec)
    again = draw_views(20, torch.Generator().manual_seed(3), spec)
    other = draw_views(20, torch.Generator().manual_seed(4), spec)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (first[:, ANGLE].abs() <= 7).all() and (first[:, X1] <= 1).all()


def test_rendering_a_view_twice_gives_identical_tensors():
    x = images()
    for mix in ("none", "mixup", "cutmix"):
        views = draw_views(len(x), torch.Generator().manual_seed(1), AugmentSpec(**{**RICH.__dict__, "mix": mix}))
        assert torch.equal(render(x, views), render(x, views))


def test_plain_view_equals_the_reference_transform():
    for channels, source in ((3, 3), (1, 1), (3, 1), (1, 3)):
        mean, std = normalization(channels)
        x = images(channels=source)
        out = render_views(x, plain_views(len(x)), None, out_size=x.shape[-1], channels=channels, mean=mean, std=std)
        assert (out - to_model_input(x, channels, mean, std)).abs().max() <= 1e-6


def test_flip_only_view_equals_the_reference_flip():
    x = images()
    views = plain_views(len(x))
    flipped = torch.tensor([True, False, True, True, False, False])
    views[:, FLIP] = flipped.float()
    expected = to_model_input(apply_flips(x, flipped), 3, MEAN, STD)
    assert (render(x, views) - expected).abs().max() <= 1e-6


def test_crop_of_the_left_half_samples_the_left_half():
    x = images(count=1, size=16)
    x[..., 8:] = 0  # the right half black: the left half's crop holds no zero column block
    views = plain_views(1)
    views[0, X1] = 0.5
    out = render(x, views)
    black = to_model_input(torch.zeros_like(x), 3, MEAN, STD)
    assert not torch.isclose(out[..., 2:-2], black[..., 2:-2]).all(-2).any()


def test_intensity_changes_values_and_mixing_follows_lambda():
    x = images()
    views = plain_views(len(x))
    views[:, 6] = 1.2  # brightness
    assert not torch.allclose(render(x, views), render(x, plain_views(len(x))))
    mixed = plain_views(2)
    mixed[:, MIX], mixed[:, LAMBDA], mixed[:, 8] = 1.0, 0.25, torch.tensor([1.0, 0.0])
    out = render_views(x[:2], mixed, x, out_size=24, channels=3, mean=MEAN, std=STD)
    expected = to_model_input(x[:2], 3, MEAN, STD) * 0.25 + to_model_input(x[[1, 0]], 3, MEAN, STD) * 0.75
    assert (out - expected).abs().max() <= 1e-4


def test_the_methods_cross_entropy_is_plain_ce_when_all_labelled_and_mixes_targets():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 1, 0])
    weight = torch.tensor([1.0, 2.0, 0.5])
    batch = Batch(torch.zeros(5, 1), labels, torch.arange(5), torch.zeros(5, dtype=torch.bool))
    assert torch.equal(build_method(BASELINE, class_weights=weight).cross_entropy(logits, batch),
                       F.cross_entropy(logits, labels, weight=weight))
    lam = torch.tensor([1.0, 0.5, 0.3, 1.0, 0.9])
    partner = torch.tensor([0, 2, 0, 1, 1])
    mixed = Batch(torch.zeros(5, 1), labels, torch.arange(5), torch.zeros(5, dtype=torch.bool),
                  partner_labels=partner, mix_lambda=lam)
    log_p = F.log_softmax(logits, 1)
    expected = -(lam * log_p[range(5), labels] + (1 - lam) * log_p[range(5), partner]).mean()
    assert torch.allclose(build_method(BASELINE).cross_entropy(logits, mixed), expected, atol=1e-6)


ACQUISITION = AugmentSpec(low_resolution=0.5, blur=1.5, gamma=0.5, noise=0.05)


def test_acquisition_changes_are_drawn_on_about_half_the_views_within_their_bounds():
    from kdistill.data.views import BLUR, GAMMA, LOW_RES, NOISE, NOISE_SEED

    views = draw_views(2000, torch.Generator().manual_seed(0), ACQUISITION)
    for column, neutral in ((LOW_RES, 1.0), (BLUR, 0.0), (GAMMA, 1.0), (NOISE, 0.0)):
        share = float((views[:, column] != neutral).float().mean())
        assert 0.45 < share < 0.55, column
    assert float(views[:, LOW_RES].min()) >= 0.5 and float(views[:, BLUR].max()) <= 1.5
    assert 1 / 1.5 - 1e-6 <= float(views[:, GAMMA].min()) and float(views[:, GAMMA].max()) <= 1.5 + 1e-6
    assert float(views[:, NOISE].max()) <= 0.05
    assert torch.equal(views[:, NOISE_SEED], views[:, NOISE_SEED].round())
    assert not ACQUISITION.flip_only() and AugmentSpec().flip_only()


def test_each_acquisition_change_renders_what_it_says_and_replays_exactly():
    from kdistill.data.views import BLUR, GAMMA, LOW_RES, NOISE, NOISE_SEED

    flat = torch.full((1, 1, 32, 32), 64, dtype=torch.uint8)
    gamma = plain_views(1)
    gamma[:, GAMMA] = 1.3
    raw = render_views(flat, gamma, None, out_size=32, channels=1, mean=(0.0,), std=(1 / 255,))
    assert torch.allclose(raw, torch.full_like(raw, 255 * (64 / 255) ** 1.3), atol=1e-3)
    grey = torch.full((2, 1, 32, 32), 128, dtype=torch.uint8)
    noisy = plain_views(2)
    noisy[:, NOISE] = 0.05
    noisy[:, NOISE_SEED] = torch.tensor([1.0, 2.0])
    out = render_views(grey, noisy, None, out_size=32, channels=1, mean=(0.0,), std=(1 / 255,))
    assert abs(float((out - 128).std()) - 0.05 * 255) < 1.0
    assert not torch.equal(out[0], out[1])  # each row its own draw
    assert torch.equal(out, render_views(grey, noisy, None, out_size=32, channels=1, mean=(0.0,), std=(1 / 255,)))
    texture = images(count=2, size=64, channels=1)
    for column, value in ((LOW_RES, 0.5), (BLUR, 1.5)):
        views = plain_views(2)
        views[:, column] = value
        smoothed = render_views(texture, views, None, out_size=64, channels=1, mean=(0.0,), std=(1 / 255,))
        assert float(smoothed.std()) < float(texture.float().std()) * 0.9, column
