"""Teacher outputs for a batch: from a live frozen teacher, or replayed from a table computed once.

Each training image has a fixed bank of views; with the reference augmentation (horizontal flip
only) the bank is exact: K=2 views, plain and mirrored. ``CachedTeacher`` runs the frozen teacher
once per (image, view), batched under ``no_grad``, and each step returns the logits of the very
view the student sees (``Batch.index``, ``Batch.flipped``): the same numbers a live teacher gives,
since in eval mode its output depends on the view alone. A cache keyed by image alone would pair
the student's view with the teacher's output on another view.

The table is stored on disk (safetensors, with the view bank) and reused by later runs; its key
hashes the teacher's weights, the decoded-image cache entry, the input size, the normalization, the
view bank and the stored dtype, so a change to any of them computes a new table. The file's header
holds the SHA-256 of the table, so a torn or altered file is detected and recomputed.

The training loop reads two things of a teacher object, so it never checks teacher types:
``reads_images`` (whether it runs on the batch's images, which must then be the ordinary
normalized tensor, not a model's own training input) and ``on(device)`` (the same outputs, on
``device``).

Methods whose teacher side is the pooled embedding (the classifier head's input, e.g. rkd) read
it the same way from ``StoredEmbeddingTeacher``: one teacher pass per (image, view) instead of one
per training step.

``head`` fine-tuning uses the same machinery for the head's input: the frozen backbone's features
are computed once per view and only the head runs in training (``HeadOnStoredFeatures``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kdistill.data import Batch, ImageSplit, iterate_batches
from kdistill.errors import ConfigError
from kdistill.fileio import atomic_file
from kdistill.log import Counted, log
from kdistill.models import find_head
from kdistill.models.inference import registered_runner

FORMAT_VERSION = 1
# One row per view: crop box (x0, y0, x1, y1) as fractions of the image, then flip (0/1).
FLIP_VIEWS = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0, 1.0]])
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def freeze(model: nn.Module) -> nn.Module:
    """Freeze every parameter and put the model in eval mode (BatchNorm uses running stats)."""
    model.requires_grad_(False)
    return model.eval()


class LiveTeacher:
    """Runs the frozen teacher on each batch, under ``no_grad``."""

    reads_images = True

    def __init__(self, model: nn.Module):
        self.model = freeze(model)

    def on(self, device: torch.device) -> LiveTeacher:
        """This teacher with its model on ``device`` (a copy, unless it is there already: a copy
        would hold it twice)."""
        if next(self.model.parameters()).device == device:
            return self
        return LiveTeacher(copy.deepcopy(self.model).to(device))

    def __call__(self, batch: Batch) -> torch.Tensor:
        self.model.eval()  # guards against a caller switching it back to train mode
        with torch.no_grad():
            return self.model(batch.images)


class CachedTeacher:
    """Teacher logits for every (training image, view): ``table`` is ``[N, K, classes]``.

    ``views`` is either one bank shared by every image (``[K, 5]``, default the plain and mirrored
    views; rows looked up by ``Batch.flipped``) or a bank per image (``[N, K, VIEW_WIDTH]``,
    kdistill/data/views.py; rows looked up by ``Batch.view``). ``bank_images``, the per-image bank
    materialized as uint8 images (``[N, K, S, H, W]``, ``materialize_views``), makes the table from
    those very images: the student reads the same uint8 view, so the replay is exact by construction."""

    reads_images = False  # rows are looked up by Batch.index and Batch.flipped / Batch.view

    def __init__(self, model: nn.Module, split: ImageSplit, *, channels: int, mean, std,
                 batch_size: int = 64, cache_dir: Path | None = None, dtype: str = "float32",
                 views: torch.Tensor = FLIP_VIEWS, bank_images: torch.Tensor | None = None):
        model = freeze(model)
        key = {"what": "logits", "weights": state_dict_sha256(model.state_dict())}
        if bank_images is not None:  # views rounded to uint8 give other numbers than float renders
            key["rendered"] = "uint8"
        # A frozen teacher may run in ONNX Runtime (kdistill/deploy/runner.py): ~1e-5 from PyTorch's logits.
        runner = registered_runner(model)
        if runner is not None:
            key["runtime"] = "onnxruntime"
        # A progress line counts the (image, view) rows: K = views.shape[-2] for a shared or per-image bank.
        forward = Counted(runner or model, total=len(split) * views.shape[-2], what="teacher table")
        self.view_of_flip = None if views.dim() == 3 else flip_view_index(views)  # None: a per-image bank

        def compute() -> torch.Tensor:
            return views_table(forward, split, views, channels=channels, mean=mean, std=std,
                               batch_size=batch_size, bank_images=bank_images)

        self.table = stored_view_table(compute, split, key, channels=channels, mean=mean, std=std,
                                       cache_dir=cache_dir, dtype=dtype, views=views)

    def __call__(self, batch: Batch) -> torch.Tensor:
        return batch_rows(self.table, batch, self.view_of_flip)

    def on(self, device: torch.device) -> Callable[[Batch], torch.Tensor]:
        """These outputs on ``device``: the table stays in CPU memory, each batch's rows move."""
        if device.type == "cpu":
            return self
        return lambda batch: self(batch).to(device)


def views_table(fn: Callable[[torch.Tensor], torch.Tensor], split: ImageSplit, views: torch.Tensor, *,
                channels: int, mean, std, batch_size: int, bank_images: torch.Tensor | None) -> torch.Tensor:
    """``fn`` on every (image, view) of a shared bank ``[K, 5]`` or a per-image bank ``[N, K, VIEW_WIDTH]``."""
    if views.dim() == 3:
        return bank_table(fn, split, views, channels=channels, mean=mean, std=std, batch_size=batch_size,
                          bank_images=bank_images)
    return view_table(fn, split, channels=channels, mean=mean, std=std, batch_size=batch_size, views=views)


def batch_rows(table: torch.Tensor, batch: Batch, view_of_flip: torch.Tensor | None) -> torch.Tensor:
    """The table's rows ``[B, ...]`` (float32) for the very views of ``batch``: looked up by
    ``Batch.view`` for a per-image bank (``view_of_flip`` None), else by ``Batch.flipped``."""
    if view_of_flip is None:
        if batch.view is None:
            raise ValueError("a view-bank teacher needs batches drawn from its bank (Batch.view)")
        return table[batch.index, batch.view].float()
    return table[batch.index, view_of_flip[batch.flipped.long()]].float()


def flip_view_index(views: torch.Tensor) -> torch.Tensor:
    """``[2]``: the bank's row of the plain view, then of the mirrored one (what ``Batch.flipped``
    selects)."""
    rows = [[i for i, v in enumerate(views) if int(v[4]) == flip] for flip in (0, 1)]
    if any(len(r) != 1 for r in rows):
        raise ValueError(f"the view bank must hold one plain and one mirrored view, got {views.tolist()}")
    return torch.tensor([rows[0][0], rows[1][0]])


def view_table(fn: Callable[[torch.Tensor], torch.Tensor], split: ImageSplit, *, channels: int,
               mean, std, batch_size: int = 64, views: torch.Tensor = FLIP_VIEWS) -> torch.Tensor:
    """``fn`` on every (image, view), batched under ``no_grad``: ``[N, K, D]`` float32."""
    table = None
    for view_index, view in enumerate(views):
        # channels_last, as in training: a ResNet-18 runs ~1.3x faster so on CPU (README, bench).
        for batch in iterate_batches(split, batch_size, channels=channels, mean=mean, std=std,
                                     channels_last=True):
            with torch.no_grad():
                out = fn(apply_view(batch.images, view)).float()
            if table is None:
                table = torch.empty(len(split), len(views), *out.shape[1:])
            table[batch.index, view_index] = out
    return table


def bank_table(fn: Callable[[torch.Tensor], torch.Tensor], split: ImageSplit, bank: torch.Tensor, *,
               channels: int, mean, std, batch_size: int = 64,
               bank_images: torch.Tensor | None = None) -> torch.Tensor:
    """``fn`` on every image's every view of a per-image bank ``[N, K, VIEW_WIDTH]``, rendered as
    training renders them (or read from ``bank_images``, the bank materialized as uint8), batched
    under ``no_grad``: ``[N, K, D]`` float32."""
    table = None
    for column in range(bank.shape[1]):
        view_ids = torch.full((len(split),), column, dtype=torch.long)
        for batch in iterate_batches(split, batch_size, channels=channels, mean=mean, std=std,
                                     channels_last=True, views=bank[:, column], view_ids=view_ids,
                                     bank_images=bank_images):
            with torch.no_grad():
                out = fn(batch.images).float()
            if table is None:
                table = torch.empty(len(split), bank.shape[1], *out.shape[1:])
            table[batch.index, column] = out
    return table


def apply_view(images: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """One view of a batch ``[B, C, S, S]``; the flip bank's views cover the whole image."""
    if view[:4].tolist() != [0.0, 0.0, 1.0, 1.0]:
        raise NotImplementedError("crop views are not implemented; the view bank is flips only")
    return images.flip(-1) if bool(view[4]) else images


def stored_view_table(compute: Callable[[], torch.Tensor], split: ImageSplit, key: dict, *,
                      channels: int, mean, std, cache_dir: Path | None, dtype: str = "float32",
                      views: torch.Tensor = FLIP_VIEWS) -> torch.Tensor:
    """The table from ``cache_dir`` when an intact one with this key exists, else ``compute()``d
    (and stored). Without a cache folder, or for images not from the decoded-image cache (whose
    key identifies the data), the table lives in memory only."""
    if dtype not in DTYPES:
        raise ConfigError(f"distill.cache_dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if cache_dir is None or split.cache_key is None:
        return compute().to(DTYPES[dtype])
    full_key = {**key, "format": FORMAT_VERSION, "data": split.cache_key,
                "input_size": split.images.shape[-1], "channels": channels, "mean": list(mean),
                "std": list(std), "dtype": dtype,
                # A per-image bank is large: its checksum stands for it (the shared flip bank is listed).
                "views": views.tolist() if views.dim() == 2 else tensor_sha256(views)}
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:32]
    path = Path(cache_dir) / "teacher" / f"{key['what']}-{digest}.safetensors"
    table = _read_table(path, digest, views)
    if table is None:
        table = compute().to(DTYPES[dtype]).contiguous()
        try:
            _write_table(path, digest, table, views)
        except OSError as exc:  # a cache that cannot be written must not stop the run
            log.info(f"teacher cache: cannot write {path} ({exc}); keeping the table in memory")
    return table


def _write_table(path: Path, digest: str, table: torch.Tensor, views: torch.Tensor) -> None:
    metadata = {"key": digest, "sha256": _tables_sha256(table, views), "format": str(FORMAT_VERSION)}
    with atomic_file(path) as tmp:
        save_file({"table": table, "views": views.contiguous()}, str(tmp), metadata=metadata)
    log.info(f"teacher cache: wrote {tuple(table.shape)} {table.dtype} to {path}")


def _read_table(path: Path, digest: str, views: torch.Tensor) -> torch.Tensor | None:
    """The stored table if the file is complete, has this key and view bank, and matches its
    checksum (over the table and the views)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        log.info(f"teacher cache: {path} is unreadable ({exc}); recomputing it")
        return None
    table, stored_views = tensors.get("table"), tensors.get("views")
    if (metadata.get("key") != digest or table is None or stored_views is None
            or metadata.get("sha256") != _tables_sha256(table, stored_views)
            or not torch.equal(stored_views, views)):
        log.info(f"teacher cache: {path} does not match its key or checksum; recomputing it")
        return None
    return table


def _tables_sha256(table: torch.Tensor, views: torch.Tensor) -> str:
    return hashlib.sha256((tensor_sha256(table) + tensor_sha256(views)).encode()).hexdigest()


def tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def state_dict_sha256(state: dict[str, torch.Tensor], skip_prefix: str | None = None) -> str:
    """Identity of a model's weights (names, dtypes, shapes, values); ``skip_prefix`` leaves a
    sub-module out (the head, whose weights the backbone features do not depend on)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        if skip_prefix and name.startswith(skip_prefix):
            continue
        tensor = state[name]
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor_sha256(tensor).encode())
    return digest.hexdigest()


class HeadOnStoredFeatures:
    """``head`` fine-tuning on stored features: wraps a method so that the head alone runs on the
    backbone's output for the very view of each batch (computed once per view, ``[N, K, F]``).

    Exact when the backbone is frozen in eval mode and the head is the model's last operation
    (checked when the features are computed). Dropout in the backbone stays off (eval mode)."""

    def __init__(self, method, model: nn.Module, split: ImageSplit, *, channels: int, mean, std,
                 batch_size: int = 64, cache_dir: Path | None = None):
        self.method = method
        self.view_of_flip = flip_view_index(FLIP_VIEWS)
        head_path, self.head = find_head(model)
        key = {"what": "head-input",
               "weights": state_dict_sha256(model.state_dict(), skip_prefix=head_path + ".")}

        def compute() -> torch.Tensor:
            return head_inputs(model, self.head, split, channels=channels, mean=mean, std=std,
                               batch_size=batch_size)

        self.table = stored_view_table(compute, split, key, channels=channels, mean=mean, std=std,
                                       cache_dir=cache_dir)

    def __call__(self, batch: Batch, model: nn.Module, teacher=None) -> dict:
        features = self.table[batch.index, self.view_of_flip[batch.flipped.long()]]
        features = features.to(batch.images.device)  # the table stays on the CPU; the head may not
        return self.method(dataclasses.replace(batch, images=features), self.head, teacher)


def head_inputs(model: nn.Module, head: nn.Module, split: ImageSplit, *, channels: int, mean, std,
                batch_size: int = 64) -> torch.Tensor:
    """The head's input for every (image, view), captured by a forward pre-hook; raises if the
    head's output on it is not the model's output (the head is not the last operation)."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        captured.clear()
        logits = model(images)
        if not torch.allclose(head(captured[0]), logits, atol=1e-4, rtol=1e-4):
            raise ConfigError(f"teacher.mode=head: {type(model).__name__}'s classifier head is not its last operation; "
                              f"use teacher.mode=full")
        return captured[0]

    try:
        return view_table(features, split, channels=channels, mean=mean, std=std, batch_size=batch_size)
    finally:
        hook.remove()
        model.train(was_training)


class StoredEmbeddingTeacher:
    """The teacher's pooled embedding (the classifier head's input) for every (training image,
    view), ``[N, K, F]``, computed once like :class:`CachedTeacher`'s logits and handed to methods
    through the same ``features(batch, paths)`` call as the live :class:`FeatureTeacher`. Exact:
    a frozen teacher in eval mode gives a view the same embedding at every step.

    ``model`` stays for binding (a method probes its layer shapes once); it never runs in training."""

    # The teacher does not read the batch's images, but the method hooks the student's own modules,
    # which need the ordinary normalized batch (not a model's own training input).
    reads_images = True

    def __init__(self, model: nn.Module, split: ImageSplit, *, channels: int, mean, std,
                 batch_size: int = 64, cache_dir: Path | None = None, dtype: str = "float32",
                 views: torch.Tensor = FLIP_VIEWS, bank_images: torch.Tensor | None = None):
        from kdistill.distill.hooks import embedding_path  # hooks imports models; kept out of import time

        self.model = freeze(model)
        self.path = embedding_path(self.model)
        self.view_of_flip = None if views.dim() == 3 else flip_view_index(views)  # None: a per-image bank
        key = {"what": "embedding", "weights": state_dict_sha256(self.model.state_dict()), "layer": self.path}
        if bank_images is not None:
            key["rendered"] = "uint8"
        embed, self.runtime = embedding_function(self.model, self.path), "pytorch"
        if registered_runner(self.model) is not None:  # the teacher's passes run in ONNX Runtime
            runner = embedding_runner(self.model, self.path, channels=channels, input_size=split.images.shape[-1])
            if runner is not None:
                embed, self.runtime = runner, "onnxruntime"
                key["runtime"] = self.runtime
        embed = Counted(embed, total=len(split) * views.shape[-2], what="teacher embeddings")

        def compute() -> torch.Tensor:
            return views_table(embed, split, views, channels=channels, mean=mean, std=std,
                               batch_size=batch_size, bank_images=bank_images)

        self.table = stored_view_table(compute, split, key, channels=channels, mean=mean, std=std,
                                       cache_dir=cache_dir, dtype=dtype, views=views)

    def on(self, device: torch.device):
        return self if device.type == "cpu" else _OnDevice(self, device)

    def features(self, batch: Batch, paths) -> tuple[None, dict[str, torch.Tensor]]:
        """``(None, {embedding path: [B, F]})``: the rows of the batch's very views (no logits are stored)."""
        if list(paths) != [self.path]:
            raise ConfigError(f"stored teacher embeddings hold {self.path} only, not {list(paths)}")
        return None, {self.path: batch_rows(self.table, batch, self.view_of_flip)}


class _OnDevice:
    """A stored teacher whose batch rows are moved to ``device`` (the table stays in CPU memory)."""

    reads_images = True

    def __init__(self, stored: StoredEmbeddingTeacher, device: torch.device):
        self.stored, self.device, self.model = stored, device, stored.model

    def features(self, batch: Batch, paths):
        _, found = self.stored.features(batch, paths)
        return None, {path: rows.to(self.device) for path, rows in found.items()}


def embedding_runner(model: nn.Module, path: str, *, channels: int, input_size: int):
    """The head's input through ONNX Runtime, as the teacher's logits are (kdistill/deploy/runner.py):
    a copy of the model with its classifier head replaced by the identity, exported and checked.
    None (stay with PyTorch hooks) when ``path`` is not the head's input, the head is not the
    model's last operation, or the export does not match."""
    from kdistill.deploy.runner import onnx_runner  # onnxruntime is an optional extra
    from kdistill.distill.hooks import INPUT_SUFFIX

    head_path, _ = find_head(model)
    if path != head_path + INPUT_SUFFIX:
        return None
    headless = copy.deepcopy(model)
    headless.set_submodule(head_path, nn.Identity())
    example = torch.randn(2, channels, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.allclose(headless(example).flatten(1), embedding_function(model, path)(example), atol=1e-5):
            return None  # something follows the head: its input is not the model's last output
    return onnx_runner(freeze(headless), channels=channels, input_size=input_size,
                       threads=torch.get_num_threads(), what="teacher embeddings")


def embedding_function(model: nn.Module, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images -> the output (or input, for ``:input`` paths) at ``path`` of one forward, flattened."""
    from kdistill.distill.hooks import capture

    def embed(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), capture(model, [path]) as found:
            model(images)
        return found[path].flatten(1)

    return embed


class FeatureTeacher(LiveTeacher):
    """A live teacher that also hands out intermediate outputs, taken by forward hooks on module
    paths (kdistill/distill/hooks.py): what feature methods read. Full-resolution maps are far too
    large to store per (image, view), so they are computed every step."""

    def on(self, device: torch.device) -> FeatureTeacher:
        if next(self.model.parameters()).device == device:
            return self
        return FeatureTeacher(copy.deepcopy(self.model).to(device))

    def features(self, batch: Batch, paths) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits [B, K], {path: output})`` of one forward under ``no_grad``."""
        from kdistill.distill.hooks import capture  # hooks imports models; kept out of import time

        self.model.eval()
        with torch.no_grad(), capture(self.model, paths) as found:
            logits = self.model(batch.images)
        return logits, dict(found)
