"""Decode image files once into a uint8 tensor ``[N, C, S, S]`` kept in memory for all epochs.

X-rays are grayscale even when saved as RGB; when every image has equal channels only one channel
is stored (a third of the memory) and it is expanded to the model's channels at batch time.
"""

from __future__ import annotations

import errno
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kdistill.errors import DataError

# What PIL raises for files that are not (complete, sane) images.
# PIL raises SyntaxError for some broken PNG chunks (e.g. a file cut inside a later chunk header).
UNREADABLE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
# ValueError covers ImageTooLarge (below).


# Largest image decoded, in pixels (width x height): 8192 x 8192. A chest X-ray is about 3000 x
# 2500; a file claiming more is far more likely a decompression bomb (a few KB that would expand to
# gigabytes) than a radiograph. Checked from the header, before any pixel is decoded. PIL's own
# guard (Image.MAX_IMAGE_PIXELS, ~89 M warning / ~179 M error) is left as it is.
MAX_IMAGE_PIXELS = 8192 * 8192


class ImageTooLarge(ValueError):
    """The header announces more pixels than MAX_IMAGE_PIXELS."""


def read_image(path: Path, size: int) -> np.ndarray:
    """Read one file as ``[S, S, 3]`` uint8 (RGB), resized to ``size`` x ``size``."""
    with Image.open(path) as image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageTooLarge(f"{width} x {height} = {width * height} pixels exceeds the limit of "
                                f"{MAX_IMAGE_PIXELS} (possible decompression bomb)")
        image.load()
        image = _to_rgb(image)
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale (common for medical images): map 0..65535 onto 0..255 (divide by 257,
        # rounded), the same scale for every image, instead of PIL's clipping at 255.
        array = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
        image = Image.fromarray(np.rint(array / 257.0).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent pixels carry no image: composite onto black (what "no signal" is in an
        # X-ray), instead of convert("RGB"), which would expose whatever colour hides under alpha 0.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def unreadable_reason(path: Path, error: Exception) -> str:
    """A short reason for the log and the report: what is wrong with the file, in words."""
    if isinstance(error, FileNotFoundError):
        return "file vanished before it could be read"
    if isinstance(error, OSError) and error.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(error, (ImageTooLarge, Image.DecompressionBombError)):
        return f"image too large ({error})"
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    return f"cannot read image ({error})"


def decode_files(
    paths: list[Path], size: int, on_bad_image: str, threads: int = 2
) -> tuple[np.ndarray, list[int], list[tuple[Path, str]]]:
    """Decode ``paths``; return ``([N, S, S, 3] uint8, kept indices, [(bad path, reason)])``.

    With ``on_bad_image="skip"`` unreadable files are left out and returned with the reason; with
    ``"error"`` the first one raises a :class:`DataError` naming the file.
    """
    def attempt(path: Path) -> np.ndarray | Exception:
        try:
            return read_image(path, size)
        except UNREADABLE_ERRORS as exc:
            return exc

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(attempt, paths))
    kept, bad, arrays = [], [], []
    for index, (path, result) in enumerate(zip(paths, results)):
        if isinstance(result, Exception):
            reason = unreadable_reason(path, result)
            if on_bad_image == "error":
                raise DataError(f"{path}: {reason}")
            bad.append((path, reason))
            continue
        kept.append(index)
        arrays.append(result)
    if not arrays:
        return np.zeros((0, size, size, 3), np.uint8), kept, bad
    return np.stack(arrays), kept, bad


def to_storage_tensor(images: np.ndarray, channels: int) -> torch.Tensor:
    """``[N, S, S, 3]`` uint8 -> ``[N, C, S, S]`` uint8 with C=1 when the content is grayscale."""
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    is_gray = bool((tensor[:, :1] == tensor[:, 1:]).all()) if len(tensor) else True
    if channels == 1 and not is_gray:
        # ITU-R 601 luma, as PIL's convert("L") does.
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        tensor = (tensor.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        is_gray = True
    return tensor[:, :1].contiguous() if is_gray else tensor.contiguous()
