"""Decode image files once into a uint8 tensor ``[N, C, S, S]`` kept in memory for all epochs.

X-rays are grayscale even when saved as RGB; when every image has equal channels only one channel
is stored (a third of the memory) and it is expanded to the model's channels at batch time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kdistill.errors import DataError

# What PIL raises for files that are not (complete, sane) images.
UNREADABLE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def read_image(path: Path, size: int) -> np.ndarray:
    """Read one file as ``[S, S, 3]`` uint8 (RGB), resized to ``size`` x ``size``."""
    with Image.open(path) as image:
        image.load()
        image = _to_rgb(image)
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale (common for medical images): scale to 8 bits instead of clipping.
        array = np.asarray(image, dtype=np.float32)
        peak = max(float(array.max()), 1.0)
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8), mode="L")
    return image.convert("RGB")


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
            if on_bad_image == "error":
                raise DataError(f"{path}: cannot read image ({result})")
            bad.append((path, f"cannot read image ({result})"))
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
