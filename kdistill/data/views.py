"""Augmented views as rows of numbers, drawn from a seed and rendered exactly.

A view is one row of ``VIEW_WIDTH`` floats: the crop box (x0, y0, x1, y1 as fractions of the
image), a flip, a rotation angle in degrees, brightness and contrast factors, an optional
mixing partner (its index in the split, the weight ``lambda`` of the image itself, the kind:
mixup or cutmix, and cutmix's pasted box), and acquisition changes: a lower resolution (the side
kept before upscaling), a Gaussian blur (sigma in pixels at 224 px), a gamma curve and Gaussian
noise (its standard deviation as a fraction of the range, and the seed of its draw). Because a view is data, a teacher can be run on it
once and its output replayed whenever the student sees the same view (the view bank), and a
live teacher can be shown the very tensor the student sees (function matching).

Rendering is deterministic: the same rows give the same tensor. The geometry (crop, flip,
rotation) is one affine ``grid_sample`` per batch, bilinear, zeros outside the image; rows whose
geometry is the identity or a plain mirror skip it, so a plain view is exactly the reference
normalized image and a flip-only view exactly its mirror. Then the acquisition changes a
different scanner or archive makes (lower resolution, blur, a gamma curve; the radiology
training-augmentation set of, e.g., nnU-Net), brightness (a multiply) and contrast (a blend with
the image's mean grey level, both clamped to [0, 255], as torchvision's ColorJitter does), then
sensor noise; rows that leave a change at its neutral value skip it; mixing comes last. A mixing partner is rendered with the same
geometry and intensity as its image, so a view needs one row only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from kdistill.data.transforms import normalization_affine

# Column layout of a view row.
(X0, Y0, X1, Y1, FLIP, ANGLE, BRIGHTNESS, CONTRAST, PARTNER, LAMBDA, MIX, CX0, CY0, CX1, CY1,
 LOW_RES, BLUR, GAMMA, NOISE, NOISE_SEED) = range(20)
VIEW_WIDTH = 20
ACQUISITION_CHANCE = 0.5  # each acquisition change is applied to half the views, at a random strength
SEED_RANGE = 2**24  # noise seeds are whole numbers a float32 column holds exactly
REFERENCE_SIDE = 224  # blur radii are given at this size and scale with the image
MIX_KINDS = {"none": 0, "mixup": 1, "cutmix": 2}


@dataclass(frozen=True)
class AugmentSpec:
    """What views are drawn: ``scale`` and ``ratio`` of a random-resized crop ([1, 1] scale: no
    crop), flip, rotation within +-``rotation`` degrees, brightness and contrast factors within
    1 +- the given amount, mixup or cutmix with lambda ~ Beta(mix_alpha, mix_alpha), and, each on
    ``ACQUISITION_CHANCE`` of the views: a resolution down to ``low_resolution`` of the side, a blur
    of sigma up to ``blur`` pixels (at 224 px), a gamma between ``1 / (1 + gamma)`` and
    ``1 + gamma``, and Gaussian noise of standard deviation up to ``noise`` of the range."""

    hflip: bool = True
    scale: tuple[float, float] = (1.0, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    mix: str = "none"
    mix_alpha: float = 0.2
    low_resolution: float = 1.0
    blur: float = 0.0
    gamma: float = 0.0
    noise: float = 0.0

    def flip_only(self) -> bool:
        """Whether these views are at most mirrors (the reference augmentation)."""
        return (self.scale[0] >= 1.0 and self.rotation == 0 and self.brightness == 0
                and self.contrast == 0 and self.mix == "none" and self.low_resolution >= 1.0
                and self.blur == 0 and self.gamma == 0 and self.noise == 0)


def augment_spec(augment: dict | AugmentSpec | None, hflip: bool) -> AugmentSpec:
    """An :class:`AugmentSpec` from the ``data.augment`` settings (a dict) and ``data.hflip``."""
    if isinstance(augment, AugmentSpec):
        return augment
    given = dict(augment or {})
    for key in ("scale", "ratio"):
        if key in given:
            given[key] = tuple(float(v) for v in given[key])
    return AugmentSpec(hflip=hflip, **given)


def plain_views(count: int) -> torch.Tensor:
    """``count`` views of the whole image, unflipped, unchanged: ``[count, VIEW_WIDTH]``."""
    views = torch.zeros(count, VIEW_WIDTH)
    views[:, X1] = views[:, Y1] = 1.0
    views[:, BRIGHTNESS] = views[:, CONTRAST] = views[:, LAMBDA] = 1.0
    views[:, LOW_RES] = views[:, GAMMA] = 1.0
    views[:, PARTNER] = -1.0
    return views


def draw_views(count: int, generator: torch.Generator, spec: AugmentSpec,
               partner_count: int | None = None) -> torch.Tensor:
    """``count`` views drawn from ``generator``: ``[count, VIEW_WIDTH]`` float32. Partners are
    drawn among the first ``partner_count`` images of the split (default ``count``)."""
    views = plain_views(count)
    if spec.hflip:
        views[:, FLIP] = (torch.rand(count, generator=generator) < 0.5).float()
    if spec.scale[0] < 1.0:
        views[:, X0:Y1 + 1] = _crop_boxes(count, generator, spec.scale, spec.ratio)
    if spec.rotation:
        views[:, ANGLE] = _uniform(count, generator, -spec.rotation, spec.rotation)
    if spec.brightness:
        views[:, BRIGHTNESS] = _uniform(count, generator, 1 - spec.brightness, 1 + spec.brightness)
    if spec.contrast:
        views[:, CONTRAST] = _uniform(count, generator, 1 - spec.contrast, 1 + spec.contrast)
    if spec.mix != "none":
        _draw_mixing(views, generator, spec, partner_count or count)
    _draw_acquisition(views, generator, spec)
    return views


def _draw_acquisition(views: torch.Tensor, generator: torch.Generator, spec: AugmentSpec) -> None:
    """Each acquisition change on ``ACQUISITION_CHANCE`` of the rows, at a uniform strength (gamma
    log-uniform, so darker and brighter curves are equally likely)."""
    count = len(views)

    def chosen() -> torch.Tensor:
        return torch.rand(count, generator=generator) < ACQUISITION_CHANCE

    if spec.low_resolution < 1.0:
        views[:, LOW_RES] = torch.where(chosen(), _uniform(count, generator, spec.low_resolution, 1.0), 1.0)
    if spec.blur > 0:
        views[:, BLUR] = torch.where(chosen(), _uniform(count, generator, 0.0, spec.blur), 0.0)
    if spec.gamma > 0:
        bound = math.log1p(spec.gamma)
        views[:, GAMMA] = torch.where(chosen(), torch.exp(_uniform(count, generator, -bound, bound)), 1.0)
    if spec.noise > 0:
        views[:, NOISE] = torch.where(chosen(), _uniform(count, generator, 0.0, spec.noise), 0.0)
        views[:, NOISE_SEED] = torch.randint(SEED_RANGE, (count,), generator=generator).float()


def _uniform(count: int, generator: torch.Generator, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def _crop_boxes(count: int, generator: torch.Generator, scale, ratio) -> torch.Tensor:
    """RandomResizedCrop-style boxes on a square image: area fraction uniform in ``scale``, aspect
    log-uniform in ``ratio``, a side over the image clipped to it, position uniform."""
    area = _uniform(count, generator, *scale)
    aspect = torch.exp(_uniform(count, generator, math.log(ratio[0]), math.log(ratio[1])))
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    x0 = torch.rand(count, generator=generator) * (1 - width)
    y0 = torch.rand(count, generator=generator) * (1 - height)
    return torch.stack([x0, y0, x0 + width, y0 + height], 1)


def _draw_mixing(views: torch.Tensor, generator: torch.Generator, spec: AugmentSpec,
                 partner_count: int) -> None:
    count = len(views)
    views[:, PARTNER] = torch.randint(partner_count, (count,), generator=generator).float()
    # torch's Beta sampler takes no generator: NumPy's, seeded from this one, keeps the draw replayable.
    seed = int(torch.randint(2**62, (1,), generator=generator))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(spec.mix_alpha, spec.mix_alpha, count)).float()
    views[:, MIX] = float(MIX_KINDS[spec.mix])
    if spec.mix == "mixup":
        views[:, LAMBDA] = lam
        return
    side = torch.sqrt(1 - lam)  # the pasted box covers 1 - lambda of the image, before clipping
    centre = torch.rand(count, 2, generator=generator)
    low = (centre - side[:, None] / 2).clamp(0, 1)
    high = (centre + side[:, None] / 2).clamp(0, 1)
    views[:, CX0], views[:, CY0], views[:, CX1], views[:, CY1] = low[:, 0], low[:, 1], high[:, 0], high[:, 1]
    views[:, LAMBDA] = 1 - (high - low).prod(1)


PartnerLookup = Callable[[torch.Tensor], torch.Tensor]


def render_views(images: torch.Tensor, views: torch.Tensor, partners: torch.Tensor | PartnerLookup | None,
                 *, out_size: int, channels: int, mean, std) -> torch.Tensor:
    """uint8 ``[B, S, H, W]`` and their views ``[B, VIEW_WIDTH]`` -> normalized float32
    ``[B, channels, out_size, out_size]``. ``partners`` gives the mixing partners' uint8 images:
    a tensor indexed by the views' partner column, or a function of those indices."""
    x = _render_raw(images, views, partners, out_size=out_size, channels=channels)
    scale, shift = normalization_affine(mean, std)
    if x.shape[1] != len(scale):  # one grey channel for a colour model: broadcast, as to_model_input does
        return (x * scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1))
    return x.mul_(scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1))  # x is this function's own


def materialize_views(images: torch.Tensor, bank: torch.Tensor, partners: torch.Tensor | PartnerLookup | None,
                      *, chunk: int = 256) -> torch.Tensor:
    """Every view of a per-image bank ``[N, K, VIEW_WIDTH]`` rendered once at the images' size and
    rounded to uint8: ``[N, K, S, H, W]``, S the source channels (the materialized bank). A batch
    of it is then an ordinary uint8 batch, and teacher and student read the very same image.
    Rounding moves each value by at most 0.5/255 of the full range from the float render; mixing
    partners are rendered into the stored view. Memory: N*K*S*H*W bytes (4,400 grey images, K=8,
    128 px: ~577 MB)."""
    count, views_per_image = bank.shape[:2]
    channels, height, width = images.shape[1:]
    out = torch.empty(count, views_per_image, channels, height, width, dtype=torch.uint8)
    for column in range(views_per_image):
        for start in range(0, count, chunk):
            rows = slice(start, min(start + chunk, count))
            out[rows, column] = _render_raw(images[rows], bank[rows, column], partners,
                                            out_size=width, channels=channels).round_().clamp_(0, 255).to(torch.uint8)
    return out


def materialized_bytes(images: torch.Tensor, views_per_image: int) -> int:
    """Bytes a materialized bank of ``views_per_image`` views of ``images`` ``[N, S, H, W]`` takes."""
    return images.numel() * views_per_image


def _render_raw(images: torch.Tensor, views: torch.Tensor, partners, *, out_size: int,
                channels: int) -> torch.Tensor:
    """The views before normalization, values in [0, 255]: float32 ``[B, 1|channels, out, out]``."""
    x = _render_unmixed(images, views, out_size, channels)
    mixed = views[:, MIX] > 0
    if bool(mixed.any()):
        chosen = mixed.nonzero().flatten()
        index = views[chosen, PARTNER].long()
        partner_images = partners(index) if callable(partners) else partners[index]
        other = _render_unmixed(partner_images, views[chosen], out_size, channels)
        x[chosen] = _mix(x[chosen], other, views[chosen])
    return x


def _render_unmixed(images: torch.Tensor, views: torch.Tensor, out_size: int, channels: int) -> torch.Tensor:
    """Geometry then intensity, on raw values in [0, 255]: float32 ``[B, 1|channels, out, out]``."""
    x = images.float()
    if x.shape[1] != channels and x.shape[1] != 1:
        x = x.mean(1, keepdim=True)  # colour images for a grayscale model, as to_model_input does
    x = _geometry(x, views, out_size)
    x = _acquisition(x, views)
    x = _intensity(x, views)
    return _noise(x, views)


def _geometry(x: torch.Tensor, views: torch.Tensor, out_size: int) -> torch.Tensor:
    full_box = (views[:, X0] == 0) & (views[:, Y0] == 0) & (views[:, X1] == 1) & (views[:, Y1] == 1)
    exact = full_box & (views[:, ANGLE] == 0) & (x.shape[-1] == out_size) & (x.shape[-2] == out_size)
    flipped = views[:, FLIP] > 0.5
    if not bool(exact.any()):  # every row resampled: no row-wise copies
        grid = F.affine_grid(_affine(views), [len(x), x.shape[1], out_size, out_size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = x.clone() if bool(exact.all()) else torch.empty(len(x), x.shape[1], out_size, out_size)
    mirror = (exact & flipped).nonzero().flatten()
    if len(mirror):
        out[mirror] = x[mirror].flip(-1)  # exact: no resampling for a plain mirror
    warped = (~exact).nonzero().flatten()
    if len(warped):
        grid = F.affine_grid(_affine(views[warped]), [len(warped), x.shape[1], out_size, out_size],
                             align_corners=False)
        out[warped] = F.grid_sample(x[warped], grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)
    if not bool(exact.all()):
        plain = (exact & ~flipped).nonzero().flatten()
        out[plain] = x[plain]
    return out


def _affine(views: torch.Tensor) -> torch.Tensor:
    """Output -> input coordinates (both in [-1, 1]) of each view: mirror, scale to the crop box,
    rotate about its centre, move to it. ``[B, 2, 3]``."""
    width, height = views[:, X1] - views[:, X0], views[:, Y1] - views[:, Y0]
    centre_x, centre_y = views[:, X0] + views[:, X1] - 1, views[:, Y0] + views[:, Y1] - 1
    sign = 1 - 2 * (views[:, FLIP] > 0.5).float()
    angle = torch.deg2rad(views[:, ANGLE])
    cos, sin = torch.cos(angle), torch.sin(angle)
    row_x = torch.stack([cos * sign * width, -sin * height, centre_x], 1)
    row_y = torch.stack([sin * sign * width, cos * height, centre_y], 1)
    return torch.stack([row_x, row_y], 1)


def _intensity(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Brightness then contrast, in place. Exact for factors of 1 (``y * 1 + m * 0`` is ``y``), so
    rows left unchanged need no masking."""
    brightness, contrast = views[:, BRIGHTNESS], views[:, CONTRAST]
    if not bool(((brightness != 1) | (contrast != 1)).any()):
        return x
    x.mul_(brightness.view(-1, 1, 1, 1)).clamp_(0, 255)
    grey = x.mean(dim=(1, 2, 3), keepdim=True)
    c = contrast.view(-1, 1, 1, 1)
    return x.mul_(c).add_(grey * (1 - c)).clamp_(0, 255)


def _acquisition(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Lower resolution, blur and gamma, row by row where a row asks for them (values in [0, 255])."""
    rows = ((views[:, LOW_RES] < 1) | (views[:, BLUR] > 0) | (views[:, GAMMA] != 1)).nonzero().flatten()
    if not len(rows):
        return x
    x = x.clone()  # the geometry may have returned the caller's own images
    for row in rows.tolist():
        image = x[row:row + 1]
        if views[row, LOW_RES] < 1:
            image = lower_resolution(image, float(views[row, LOW_RES]))
        if views[row, BLUR] > 0:
            image = blur_at_reference(image, float(views[row, BLUR]))
        if views[row, GAMMA] != 1:
            image = 255.0 * (image.clamp(min=0) / 255.0).pow(float(views[row, GAMMA]))
        x[row:row + 1] = image
    return x


def _noise(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Gaussian noise, each row's own draw from its seed, then clamped to [0, 255]."""
    rows = (views[:, NOISE] > 0).nonzero().flatten()
    if not len(rows):
        return x
    for row in rows.tolist():
        generator = torch.Generator().manual_seed(int(views[row, NOISE_SEED]))
        noise = torch.randn(x[row].shape, generator=generator)
        x[row] = (x[row] + 255.0 * float(views[row, NOISE]) * noise).clamp_(0, 255)
    return x


def lower_resolution(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Area-averaged down to ``factor`` of the side, then bilinear back up (float ``[B, C, S, S]``)."""
    side = x.shape[-1]
    small = F.interpolate(x, size=max(2, round(side * factor)), mode="area")
    return F.interpolate(small, size=side, mode="bilinear", align_corners=False)


def blur_at_reference(x: torch.Tensor, sigma_at_reference: float) -> torch.Tensor:
    """Gaussian blur of ``sigma_at_reference`` pixels at 224 px, scaled to the image's side."""
    sigma = sigma_at_reference * x.shape[-1] / REFERENCE_SIDE
    return gaussian_blur(x, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)


def _mix(x: torch.Tensor, other: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    lam = views[:, LAMBDA].view(-1, 1, 1, 1)
    mixup = x * lam + other * (1 - lam)
    size = x.shape[-1]
    cols = (torch.arange(size) + 0.5) / size
    inside_x = (cols >= views[:, CX0, None]) & (cols < views[:, CX1, None])  # [B, W]
    inside_y = (cols >= views[:, CY0, None]) & (cols < views[:, CY1, None])  # [B, H]
    pasted = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    cutmix = torch.where(pasted, other, x)
    return torch.where((views[:, MIX] == MIX_KINDS["mixup"]).view(-1, 1, 1, 1), mixup, cutmix)
