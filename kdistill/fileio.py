"""Atomic writes: every output is written under a temporary name and renamed when complete, so an
interrupted run never leaves a half-written file or checkpoint behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdistill.errors import KdistillError


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in blocks (cache arrays and resume states are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create owner-only files; outputs get the usual permissions instead.
_UMASK = _current_umask()


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for any writer; on success it replaces ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        for child in tmp.iterdir():
            os.chmod(child, (0o777 if child.is_dir() else 0o666) & ~_UMASK)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_leftover_of(entry_name: str, name: str) -> bool:
    """Whether ``entry_name`` is what an interrupted atomic write of ``name`` can leave beside it:
    ``.NAME.xxxx.tmp`` (a temporary file or folder) or ``.NAME.old`` (a replaced folder)."""
    if entry_name == f".{name}.old":
        return True
    return entry_name.startswith(f".{name}.") and entry_name.endswith(".tmp")


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree; a symbolic link is removed itself, never what it points to."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def check_output_file(path: Path) -> None:
    """``path`` can be written as a file: it is not a folder and no folder above it is a file.
    Checked before any work, so the error comes first, not after an evaluation."""
    if path.is_dir():
        raise KdistillError(f"{path}: is a folder; give a file name (e.g. {path / 'results.json'})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise KdistillError(f"{path}: cannot be written, {parent} is a file")
            return
