"""The shift battery's renderings: deterministic, uint8, each change doing what its name says."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.data.shifts import BATTERY, SEVERITIES, SHIFTS, battery_rendering, render_shift, rendering_names


def flat(value: int, count: int = 8, size: int = 32) -> torch.Tensor:
    return torch.full((count, 1, size, size), value, dtype=torch.uint8)


def textured(count: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(40, 216, (count, 1, size, size), generator=generator, dtype=torch.uint8)


def test_the_battery_covers_every_family_the_issue_names_at_three_severities():
    families = {shift.family for shift in BATTERY}
    assert families == {"framing", "intensity", "sharpness", "noise", "compression", "resolution"}
    assert {"zoom_in", "zoom_out", "off_centre", "gamma", "contrast", "brightness", "blur", "sharpen",
            "noise", "jpeg", "resolution"} == set(SHIFTS)
    assert all(len(shift.levels) == len(SEVERITIES) == 3 for shift in BATTERY)
    assert len(rendering_names()) == 3 * len(BATTERY)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_every_rendering_is_repeatable_uint8_of_the_same_shape_and_changes_the_images(name):
    images = textured(size=96)  # blur radii scale with the side: at 32 px the mildest is a no-op
    for severity in range(3):
        once = render_shift(images, name, severity, seed=0)
        assert once.dtype == torch.uint8 and once.shape == images.shape
        assert torch.equal(once, render_shift(images, name, severity, seed=0))
        assert not torch.equal(once, images)


def test_stronger_severities_move_the_images_further():
    images = textured(count=16, size=64)
    for name in SHIFTS:
        distances = [(render_shift(images, name, s).float() - images.float()).abs().mean() for s in range(3)]
        assert distances[0] < distances[2], name


def test_zoom_out_frames_the_image_in_black_and_zoom_in_enlarges_the_centre():
    images = flat(200, count=2, size=40)
    out = render_shift(images, "zoom_out", 2)  # the image fills 0.7 of the side
    assert int(out[0, 0, 0, 0]) == 0 and int(out[0, 0, 20, 20]) == 200
    border = round(40 * 0.15) - 1
    assert int(out[0, 0, 20, border - 1]) == 0 and int(out[0, 0, 20, 40 - border]) == 0
    square = torch.zeros(1, 1, 40, 40, dtype=torch.uint8)
    square[..., 16:24, 16:24] = 255
    zoomed = render_shift(square, "zoom_in", 2)  # the central 0.7 of the side fills the frame
    assert int((zoomed > 127).sum()) > int((square > 127).sum()) * 1.6


def test_off_centre_moves_each_image_by_the_stated_distance():
    size = 100
    dot = torch.zeros(6, 1, size, size, dtype=torch.uint8)
    dot[..., 48:52, 48:52] = 255
    moved = render_shift(dot, "off_centre", 1)  # 0.10 of the side
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    for image in moved[:, 0].float():
        cy, cx = float((image * ys).sum() / image.sum()), float((image * xs).sum() / image.sum())
        assert math.hypot(cy - 49.5, cx - 49.5) == pytest.approx(10.0, abs=0.6)


def test_two_way_intensity_changes_go_up_for_some_images_and_down_for_others():
    images = flat(100, count=64)
    out = render_shift(images, "brightness", 1).float().mean(dim=(1, 2, 3))  # factors 1.3 / 0.7
    assert set(out.round().tolist()) == {130.0, 70.0}
    gamma = render_shift(flat(64, count=64), "gamma", 0).float().mean(dim=(1, 2, 3))  # 1.1 / 0.9
    expected = {round(255 * (64 / 255) ** 1.1), round(255 * (64 / 255) ** 0.9)}
    assert set(gamma.round().tolist()) == expected


def test_noise_has_the_stated_spread_and_blur_and_resolution_lower_the_detail_sharpening_raises():
    grey = flat(128, count=4, size=64)
    noise = render_shift(grey, "noise", 2).float() - 128  # std 0.08 of the range
    assert float(noise.std()) == pytest.approx(0.08 * 255, rel=0.05)
    images = textured(count=4, size=64)
    detail = float(images.float().std())
    assert float(render_shift(images, "blur", 1).float().std()) < detail
    assert float(render_shift(images, "resolution", 1).float().std()) < detail
    assert float(render_shift(images, "sharpen", 1).float().std()) > detail


def test_jpeg_keeps_a_smooth_image_close_and_degrades_more_at_lower_quality():
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8).expand(2, 1, 64, 64).contiguous()
    errors = [float((render_shift(ramp, "jpeg", s).float() - ramp.float()).abs().mean()) for s in range(3)]
    assert errors[0] < 3 and errors[0] < errors[2]


def test_colour_images_are_rendered_per_channel():
    images = textured(count=3).expand(3, 3, 32, 32).contiguous()
    for name in SHIFTS:
        out = render_shift(images, name, 1)
        assert out.shape == (3, 3, 32, 32)
        assert torch.equal(out[:, 0], out[:, 1]) or name in ("noise",), name


def test_the_seed_changes_the_draws_and_a_cached_rendering_is_read_back_unchanged(tmp_path):
    images = textured()
    assert not torch.equal(render_shift(images, "noise", 0, seed=0), render_shift(images, "noise", 0, seed=1))
    first = battery_rendering(images, "split-key", "noise", 0, 0, tmp_path)
    stored = list((tmp_path / "images").glob("battery-*.npy"))
    assert len(stored) == 1
    again = battery_rendering(images, "split-key", "noise", 0, 0, tmp_path)
    assert torch.equal(first, again) and torch.equal(first, render_shift(images, "noise", 0, seed=0))
    battery_rendering(images, "split-key", "noise", 1, 0, tmp_path)
    assert len(list((tmp_path / "images").glob("battery-*.npy"))) == 2
    assert torch.equal(battery_rendering(images, None, "noise", 0, 0, tmp_path), first)  # no key: not stored
    assert len(list((tmp_path / "images").glob("battery-*.npy"))) == 2
