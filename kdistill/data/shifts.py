"""The shift battery: a split re-rendered under controlled acquisition changes.

A model trained on one hospital's images meets another hospital's framing, exposure curves,
detector sharpness, noise and compression. A split carved from the training folder shares all of
those with training, so it cannot say what a change of any of them costs. The battery renders
each of the changes below at three severities (mild, moderate, strong) onto uint8 images, so any
model reads the rendered copy exactly as it reads the split itself.

Severity levels follow MedMNIST-C's pneumonia-X-ray levels 1, 3 and 5 where the two share a
corruption (brightness, contrast, gamma, Gaussian noise, JPEG quality, blur, resolution); framing
and sharpening are kdistill's own. Lengths are fractions of the image side (blur radii are given
at 224 px and scaled with the image), so a 128 px run sees the same physical change.

Changes that go both ways (brighter or darker, more or less contrast, gamma above or below 1)
go up for a fixed half of the images and down for the other half; ``off_centre`` moves each image
in its own direction. Every random draw comes from a generator seeded by the battery seed and
the rendering's name, so a rendering is the same tensor every time: every model is scored on the
same images.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kdistill.data.cache import cached_images
from kdistill.data.views import blur_at_reference, lower_resolution

SEVERITIES = ("mild", "moderate", "strong")
CHUNK = 64  # images rendered at a time: bounds the float copies in memory


@dataclass(frozen=True)
class Shift:
    """One acquisition change: its name, the family it belongs to, one level per severity
    (a pair ``(up, down)`` for changes that go both ways) and what the level measures."""

    name: str
    family: str
    levels: tuple
    unit: str
    render: Callable[[torch.Tensor, object, torch.Tensor], torch.Tensor]


def _affine(x: torch.Tensor, scale: float, shift_xy: torch.Tensor) -> torch.Tensor:
    """Each image resampled through ``output -> input`` coordinates ``scale * p + shift`` (both
    in [-1, 1] image units), bilinear, black outside the image (a detector border)."""
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift_xy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _zoom_in(x: torch.Tensor, kept_side: float, draws: torch.Tensor) -> torch.Tensor:
    """The central ``kept_side`` of the image fills the frame: the lungs look larger."""
    return _affine(x, kept_side, torch.zeros(len(x), 2))


def _zoom_out(x: torch.Tensor, image_side: float, draws: torch.Tensor) -> torch.Tensor:
    """The image shrunk to ``image_side`` of the frame, centred on black: the lungs look smaller."""
    return _affine(x, 1.0 / image_side, torch.zeros(len(x), 2))


def _off_centre(x: torch.Tensor, distance: float, draws: torch.Tensor) -> torch.Tensor:
    """The image moved by ``distance`` of its side, each in its own direction (``draws`` are
    angles in [0, 1) turns)."""
    angle = 2 * math.pi * draws
    # The grid maps output to input, so the input is sampled against the move; [-1, 1] spans 2 units.
    shift = -2 * distance * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return _affine(x, 1.0, shift)


def _both_ways(x: torch.Tensor, levels: tuple[float, float], draws: torch.Tensor,
               change: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``change`` at the ``up`` level for images whose draw is below 0.5, else at ``down``."""
    up, down = levels
    factor = torch.where(draws < 0.5, torch.tensor(up), torch.tensor(down)).view(-1, 1, 1, 1)
    return change(x, factor)


def _gamma(x: torch.Tensor, levels, draws: torch.Tensor) -> torch.Tensor:
    """``255 * (x / 255) ** gamma``: a different exposure curve (gamma > 1 darkens mid-tones)."""
    return _both_ways(x, levels, draws, lambda v, g: 255.0 * (v / 255.0).pow(g))


def _contrast(x: torch.Tensor, levels, draws: torch.Tensor) -> torch.Tensor:
    """Values moved away from (factor > 1) or towards (< 1) the image's mean grey level."""
    def change(v, c):
        grey = v.mean(dim=(1, 2, 3), keepdim=True)
        return grey + c * (v - grey)
    return _both_ways(x, levels, draws, change)


def _brightness(x: torch.Tensor, levels, draws: torch.Tensor) -> torch.Tensor:
    """Every value multiplied by the factor (a brighter or darker exposure)."""
    return _both_ways(x, levels, draws, lambda v, b: v * b)


def _blur(x: torch.Tensor, sigma: float, draws: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of this radius (pixels at 224 px): a softer detector or reconstruction."""
    return blur_at_reference(x, sigma)


def _sharpen(x: torch.Tensor, amount: float, draws: torch.Tensor) -> torch.Tensor:
    """Unsharp masking ``x + amount * (x - blur(x))`` at radius 1 px (224 px): edge-enhancing
    post-processing, as many X-ray consoles apply."""
    return x + amount * (x - blur_at_reference(x, 1.0))


def _noise(x: torch.Tensor, std: float, draws: torch.Tensor) -> torch.Tensor:
    """Additive Gaussian noise of ``std`` times the full range (``draws`` are standard normals,
    one per value)."""
    return x + 255.0 * std * draws


def _jpeg(x: torch.Tensor, quality: int, draws: torch.Tensor) -> torch.Tensor:
    """Each image saved and read back as JPEG at this quality (archive or transfer compression),
    by Pillow; grey images as one-channel JPEGs, colour ones as RGB."""
    out = []
    for image in _to_uint8(x).permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=int(quality))
        decoded = np.asarray(Image.open(buffer))
        out.append(torch.from_numpy(decoded.reshape(image.shape).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).float()


def _resolution(x: torch.Tensor, factor: float, draws: torch.Tensor) -> torch.Tensor:
    """Area-averaged down to ``factor`` of the side, then bilinear back up: a lower-resolution
    detector or a downsampled archive copy."""
    return lower_resolution(x, factor)


BATTERY: tuple[Shift, ...] = (
    Shift("zoom_in", "framing", (0.9, 0.8, 0.7), "side of the image kept", _zoom_in),
    Shift("zoom_out", "framing", (0.9, 0.8, 0.7), "side of the frame the image fills", _zoom_out),
    Shift("off_centre", "framing", (0.05, 0.10, 0.15), "move, fraction of the side", _off_centre),
    Shift("gamma", "intensity", ((1.1, 0.9), (1.3, 0.7), (1.6, 0.4)), "exponent (up / down)", _gamma),
    Shift("contrast", "intensity", ((1.1, 0.9), (1.3, 0.7), (1.6, 0.4)), "contrast factor (up, down)",
          _contrast),
    Shift("brightness", "intensity", ((1.1, 0.9), (1.3, 0.7), (1.5, 0.5)), "brightness factor (up, down)",
          _brightness),
    Shift("blur", "sharpness", (0.8, 1.4, 2.0), "Gaussian sigma, px at 224", _blur),
    Shift("sharpen", "sharpness", (0.5, 1.0, 2.0), "unsharp-mask amount", _sharpen),
    Shift("noise", "noise", (0.04, 0.06, 0.08), "Gaussian std, fraction of the range", _noise),
    Shift("jpeg", "compression", (50, 15, 7), "JPEG quality", _jpeg),
    Shift("resolution", "resolution", (0.8, 0.6, 0.4), "side kept before upscaling", _resolution),
)
SHIFTS = {shift.name: shift for shift in BATTERY}


def covered_by(spec) -> list[str]:
    """The battery's shifts that training views of this ``AugmentSpec`` (kdistill/data/views.py)
    already draw, at some strength: a model trained on them is no longer tested out of its
    training distribution there, so reports keep those shifts apart from the unseen ones."""
    if spec is None:
        return []
    covered = {"zoom_in": spec.scale[0] < 1.0, "brightness": spec.brightness > 0, "contrast": spec.contrast > 0,
               "gamma": spec.gamma > 0, "blur": spec.blur > 0, "noise": spec.noise > 0,
               "resolution": spec.low_resolution < 1.0}
    return [shift.name for shift in BATTERY if covered.get(shift.name)]


def rendering_names(shifts: tuple[Shift, ...] = BATTERY) -> list[tuple[str, int]]:
    """Every ``(shift name, severity index)`` of the battery, in a fixed order."""
    return [(shift.name, severity) for shift in shifts for severity in range(len(SEVERITIES))]


def render_shift(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """uint8 ``[N, C, S, S]`` -> the same images under shift ``name`` at ``severity`` (0 mild,
    1 moderate, 2 strong): uint8 ``[N, C, S, S]``, the same tensor for the same arguments."""
    shift = SHIFTS[name]
    level = shift.levels[severity]
    generator = torch.Generator().manual_seed(_rendering_seed(seed, name, severity))
    per_image = torch.rand(len(images), generator=generator)  # direction or angle of each image
    out = torch.empty_like(images)
    for start in range(0, len(images), CHUNK):
        chunk = images[start:start + CHUNK].float()
        if name == "noise":  # one standard normal per value, drawn in order chunk by chunk
            draws = torch.randn(chunk.shape, generator=generator)
        else:
            draws = per_image[start:start + CHUNK]
        out[start:start + CHUNK] = _to_uint8(shift.render(chunk, level, draws))
    return out


def _rendering_seed(seed: int, name: str, severity: int) -> int:
    """A seed per rendering, so adding a shift to the battery leaves the others' draws as they were."""
    digest = hashlib.sha256(f"{seed}:{name}:{severity}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255).to(torch.uint8)


def describe_battery(shifts: tuple[Shift, ...] = BATTERY) -> list[dict]:
    """The battery as plain data (for results.json and the report): name, family, unit, levels."""
    return [{"name": s.name, "family": s.family, "unit": s.unit,
             "levels": [list(level) if isinstance(level, tuple) else level for level in s.levels]}
            for s in shifts]


# Stored renderings depend on this file's code: any change to it selects new cache entries.
SHIFTS_SHA256 = hashlib.sha256(open(__file__, "rb").read()).hexdigest()[:16]


def battery_rendering(images: torch.Tensor, source_key: str | None, name: str, severity: int, seed: int,
                      cache_dir) -> torch.Tensor:
    """``render_shift`` of a split's images, kept in the decoded-image cache when the split came
    from it (``source_key``, its entry), so every model of a run and later runs read one copy."""
    if source_key is None:
        return render_shift(images, name, severity, seed)
    key = {"source": source_key, "shifts": SHIFTS_SHA256, "name": name, "severity": severity, "seed": seed}
    return cached_images(key, lambda: render_shift(images, name, severity, seed), cache_dir, what="battery")
