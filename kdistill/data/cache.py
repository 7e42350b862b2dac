"""Decoded-image cache on disk: decode and resize a file list once, read it back memory-mapped.

Decoding 5,000 JPEGs takes longer than an epoch of the reference student, so the decoded uint8
images of a split are stored as one ``.npy`` file ``[N, C, S, S]`` (C=1 when every image is
grayscale; expanded to the model's channels at batch time) and reused by every later epoch and run.

Layout of ``CACHE_DIR/images/``: ``<key>.npy`` and ``<key>.json``. The key hashes the absolute file
paths, their sizes and modification times, the input size, the requested channels and
``FORMAT_VERSION``, so changing any of them selects another entry. Both files are written under a
temporary name and renamed; the JSON manifest comes last and records the array's shape, dtype, byte
size and SHA-256, so an entry whose array was torn, truncated or altered is detected and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import torch

from kdistill.data import decode as decode_module
from kdistill.data.decode import decode_files, to_storage_tensor
from kdistill.errors import DataError
from kdistill.fileio import atomic_file, sha256_file, write_json_atomic
from kdistill.log import log, progress_bar

FORMAT_VERSION = 1
# Entries also depend on how files are decoded: any change to decode.py selects new entries.
DECODER_SHA256 = hashlib.sha256(Path(decode_module.__file__).read_bytes()).hexdigest()[:16]
ENV_VAR = "KDISTILL_CACHE_DIR"
DISABLED = ("off", "none", "false", "")
CHUNK = 256  # images decoded at a time: bounds the [chunk, S, S, 3] RGB buffer


def resolve_cache_dir(setting: str | None = "auto") -> Path | None:
    """``data.cache_dir``: ``auto`` -> ``$KDISTILL_CACHE_DIR`` or ``~/.cache/kdistill``;
    ``None``/``off`` -> no disk cache; anything else is the folder itself."""
    if setting is None or str(setting).strip().lower() in DISABLED:
        return None
    if setting == "auto":
        setting = os.environ.get(ENV_VAR) or str(Path.home() / ".cache" / "kdistill")
        if setting.strip().lower() in DISABLED:
            return None
    return Path(setting).expanduser()


def decoded_images_key(paths: list[Path], size: int, channels: int) -> str:
    """What the decoded array depends on: the files (path, size, mtime), the size and channels."""
    files = []
    for path in paths:
        try:
            stat = path.stat()
            files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        except OSError:  # vanished or unreadable: decoding will report it
            files.append([str(path), -1, -1])
    text = json.dumps({"format": FORMAT_VERSION, "decoder": DECODER_SHA256, "size": size,
                       "pillow": PIL.__version__,  # its resampling can change between releases
                       "channels": channels, "files": files})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def decode_to_storage(paths: list[Path], size: int, channels: int, on_bad_image: str,
                      what: str = "decoding images") -> tuple[torch.Tensor, list[int], list[tuple[Path, str]]]:
    """Decode in chunks straight to the storage format (``to_storage_tensor``): the 3-channel RGB
    buffer of the whole list never exists, only one chunk of it. Returns (images, kept, bad).
    A progress line named ``what`` counts the files (kdistill/log.py)."""
    parts, kept, bad = [], [], []
    with progress_bar(total=len(paths), what=what, unit="file") as bar:
        for start in range(0, len(paths), CHUNK):
            arrays, chunk_kept, chunk_bad = decode_files(paths[start:start + CHUNK], size, on_bad_image)
            kept += [start + i for i in chunk_kept]
            bad += chunk_bad
            if len(arrays):
                parts.append(to_storage_tensor(arrays, channels))
            bar.update(len(paths[start:start + CHUNK]))
    if not parts:
        return torch.zeros(0, 1, size, size, dtype=torch.uint8), kept, bad
    stored = max(part.shape[1] for part in parts)  # one colour chunk makes the whole split colour
    images = torch.cat([part.expand(-1, stored, -1, -1) for part in parts])
    return images.contiguous(), kept, bad


def cached_decode(paths: list[Path], size: int, channels: int, on_bad_image: str, cache_dir: Path | None,
                  what: str = "decoding images") -> tuple[torch.Tensor, list[int], list[tuple[Path, str]], str | None]:
    """Decoded images of ``paths`` (memory-mapped from the cache when possible).

    Returns (images ``[N, C, S, S]`` uint8, kept indices, [(bad path, reason)], cache key or None).
    """
    if cache_dir is None:
        return (*decode_to_storage(paths, size, channels, on_bad_image, what), None)
    key = decoded_images_key(paths, size, channels)
    entry = cache_dir / "images" / key
    loaded = _load_entry(entry)
    if loaded is None:
        images, kept, bad = decode_to_storage(paths, size, channels, on_bad_image, what)
        try:
            _write_entry(entry, images, kept, bad)
        except OSError as exc:  # a cache that cannot be written must not stop the run
            log.info(f"decoded-image cache: cannot write {entry}.npy ({exc}); keeping the images in memory")
            return images, kept, bad, None
        loaded = _load_entry(entry)
        if loaded is None:  # e.g. altered between writing and reading back
            log.info(f"{entry}.npy: cannot read the decoded images back; using them from memory")
            return images, kept, bad, None
    images, kept, bad = loaded
    if bad and on_bad_image == "error":
        path, reason = bad[0]
        raise DataError(f"{path}: {reason}")
    return images, kept, bad, key


def cached_images(key: dict, render: Callable[[], torch.Tensor], cache_dir: Path | None, what: str) -> torch.Tensor:
    """Images ``render()`` makes from other images (uint8 ``[N, C, S, S]``), stored in the cache
    under a hash of ``key`` (which must name everything they depend on) and read back
    memory-mapped by later calls; without a cache folder they are rendered every call."""
    if cache_dir is None:
        return render()
    digest = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, **key}, sort_keys=True).encode()).hexdigest()[:32]
    entry = cache_dir / "images" / f"{what}-{digest}"
    loaded = _load_entry(entry)
    if loaded is not None:
        return loaded[0]
    images = render()
    try:
        _write_entry(entry, images, list(range(len(images))), [], quiet=True)
    except OSError as exc:  # a cache that cannot be written must not stop the run
        log.info(f"decoded-image cache: cannot write {entry}.npy ({exc}); keeping the images in memory")
        return images
    loaded = _load_entry(entry)
    return images if loaded is None else loaded[0]


def _write_entry(entry: Path, images: torch.Tensor, kept: list[int], bad: list[tuple[Path, str]],
                 quiet: bool = False) -> None:
    manifest_path = entry.with_suffix(".json")
    manifest_path.unlink(missing_ok=True)  # no manifest may ever describe a half-rewritten array
    array_path = entry.with_suffix(".npy")
    with atomic_file(array_path) as tmp, open(tmp, "wb") as handle:  # a handle: np.save adds no suffix
        np.save(handle, images.numpy(), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    manifest = {"format": FORMAT_VERSION, "shape": list(images.shape), "dtype": "uint8",
                "bytes": array_path.stat().st_size, "sha256": sha256_file(array_path),
                "kept": kept, "bad": [[str(p), reason] for p, reason in bad]}
    write_json_atomic(manifest_path, manifest)
    (log.debug if quiet else log.info)(f"decoded-image cache: wrote {len(kept)} images {tuple(images.shape[1:])} to {array_path}")


def _load_entry(entry: Path):
    """The cached (images, kept, bad) if the entry is complete and intact, else None."""
    manifest_path, array_path = entry.with_suffix(".json"), entry.with_suffix(".npy")
    if not manifest_path.is_file() or not array_path.is_file():
        return None
    problem = _check_entry(manifest_path, array_path)
    if problem:
        log.info(f"decoded-image cache: {array_path} {problem}; rebuilding it")
        return None
    manifest = json.loads(manifest_path.read_text())
    # Copy-on-write mapping: pages are shared with the page cache and nothing is ever written back.
    array = np.load(array_path, mmap_mode="c", allow_pickle=False)
    images = torch.from_numpy(array)
    bad = [(Path(p), reason) for p, reason in manifest["bad"]]
    return images, manifest["kept"], bad


def _check_entry(manifest_path: Path, array_path: Path) -> str | None:
    """Why the entry cannot be used (None when it can)."""
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = (manifest["format"], manifest["bytes"], manifest["sha256"], manifest["shape"])
        if not isinstance(manifest["kept"], list) or not isinstance(manifest["bad"], list):
            raise TypeError("kept/bad")
    except (OSError, ValueError, KeyError, TypeError):
        return "has an unreadable manifest"
    if expected[0] != FORMAT_VERSION:
        return f"has format {expected[0]}, not {FORMAT_VERSION}"
    if array_path.stat().st_size != expected[1]:
        return f"is {array_path.stat().st_size} bytes, the manifest says {expected[1]} (truncated?)"
    try:
        header = np.load(array_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return f"is not a readable .npy file ({exc})"
    if list(header.shape) != expected[3] or header.dtype != np.uint8:
        return f"holds {header.dtype} {list(header.shape)}, the manifest says uint8 {expected[3]}"
    if sha256_file(array_path) != expected[2]:
        return "does not match its checksum (torn or altered)"
    return None


@dataclasses.dataclass
class Decoded:
    """A file list's images, decoded or read from the cache. ``entry`` is set while a new cache
    entry is still to be written (:func:`commit`)."""

    images: torch.Tensor
    kept: list[int]
    bad: list[tuple[Path, str]]
    key: str | None  # the cache entry the images come from or go to; None without a cache
    entry: Path | None = None


def decode_uncommitted(paths: list[Path], size: int, channels: int, on_bad_image: str,
                       cache_dir: Path | None, what: str = "decoding images") -> Decoded:
    """What :func:`cached_decode` returns, except that a new entry is not written yet: the loader
    first checks the images (every split holds every class), so a refused run caches nothing."""
    if cache_dir is None:
        return Decoded(*decode_to_storage(paths, size, channels, on_bad_image, what), None)
    key = decoded_images_key(paths, size, channels)
    entry = cache_dir / "images" / key
    loaded = _load_entry(entry)
    if loaded is None:
        return Decoded(*decode_to_storage(paths, size, channels, on_bad_image, what), key, entry)
    images, kept, bad = loaded
    if bad and on_bad_image == "error":
        path, reason = bad[0]
        raise DataError(f"{path}: {reason}")
    return Decoded(images, kept, bad, key)


def commit(decoded: Decoded) -> tuple[torch.Tensor, str | None]:
    """Write a pending cache entry; return the images (memory-mapped from the entry once written)
    and the entry's key (None when it could not be written: the images stay in memory)."""
    if decoded.entry is None:
        return decoded.images, decoded.key
    try:
        _write_entry(decoded.entry, decoded.images, decoded.kept, decoded.bad)
    except OSError as exc:  # a cache that cannot be written must not stop the run
        log.info(f"decoded-image cache: cannot write {decoded.entry}.npy ({exc}); keeping the images in memory")
        return decoded.images, None
    loaded = _load_entry(decoded.entry)
    if loaded is None:  # e.g. altered between writing and reading back
        log.info(f"{decoded.entry}.npy: cannot read the decoded images back; using them from memory")
        return decoded.images, None
    return loaded[0], decoded.key
