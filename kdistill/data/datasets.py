"""Datasets as decoded uint8 tensors in memory, their train/val/test splits, and batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from kdistill.data.cache import Decoded, commit, decode_uncommitted, resolve_cache_dir
from kdistill.data.digits import DIGIT_CLASSES, digits_images
from kdistill.data.folder import FolderSplit, class_names, scan_dataset_root, scan_split
from kdistill.data.split import (grouped_holdout, matching_holdout, merge_identical_files, patient_keys,
                                 shared_groups)
from kdistill.data.transforms import apply_flips, normalization, random_flips, to_model_input
from kdistill.data.views import FLIP, LAMBDA, PARTNER, AugmentSpec, augment_spec, draw_views, render_views
from kdistill.errors import ConfigError, DataError
from kdistill.log import log

if TYPE_CHECKING:
    from kdistill.config import DataConfig


@dataclass
class ImageSplit:
    """One split held in memory: ``images`` is uint8 ``[N, 1|3, S, S]``."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    groups: list[str]
    cache_key: str | None = None  # the decoded-image cache entry the images come from, if any

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass
class DatasetBundle:
    """Everything the pipeline needs to know about the data."""

    classes: list[str]
    positive_class: str | None
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    input_size: int
    channels: int
    info: dict = field(default_factory=dict)
    hflip: bool = True  # training augmentation: random horizontal flip
    # Training views (kdistill/data/views.py); None: flips only, as ``hflip`` says.
    augment: AugmentSpec | None = None
    # A fixed bank of views per training image, ``[N, K, VIEW_WIDTH]``: each epoch draws one per
    # image from it instead of fresh views (the students under a view bank).
    bank: torch.Tensor | None = None
    # Images without labels (``data.unlabeled``, or train images whose labels a labelled-fraction
    # simulation dropped): label -1; only the distilled student trains on them.
    unlabeled: ImageSplit | None = None
    # The bank rendered once, uint8 ``[N, K, S, H, W]`` (``materialize_views``): batches index it and
    # take the ordinary uint8 path; None: each batch renders its views.
    bank_images: torch.Tensor | None = None
    # Labelled folders from other sources (``data.external``; LabelledFolder, kdistill/data/external.py),
    # evaluated beside the test split, never selected on; and the site's calibration sample.
    external: list = field(default_factory=list)
    site: object | None = None

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return normalization(self.channels)

    @property
    def positive_index(self) -> int | None:
        return None if self.positive_class is None else self.classes.index(self.positive_class)


@dataclass
class Batch:
    """A training or evaluation batch; ``index`` and ``flipped`` (and, under a view bank, ``view``)
    identify the exact view seen."""

    # float32 [B, C, S, S], normalized; or, where the training loop asked the model for its own input
    # form (kdistill/models/fast_path.py), what ``iterate_batches``'s ``to_input`` made: the model alone reads it.
    images: torch.Tensor
    labels: torch.Tensor  # int64 [B]; -1 for an image without a label
    index: torch.Tensor  # int64 [B], positions in the split
    flipped: torch.Tensor  # bool [B]
    view: torch.Tensor | None = None  # int64 [B], the bank column of each image's view
    labeled: torch.Tensor | None = None  # bool [B]; None: labels >= 0
    partner_labels: torch.Tensor | None = None  # int64 [B], the mixing partner's label (mixed views)
    mix_lambda: torch.Tensor | None = None  # float32 [B], the image's own share of a mixed view

    def __post_init__(self):
        if self.labeled is None:
            self.labeled = self.labels >= 0


def load_dataset(settings: DataConfig) -> DatasetBundle:
    """Load a folder (or the built-in ``digits``) and return patient-grouped train/val/test splits,
    as the ``data`` section of a config says (every default lives there, in kdistill/config.py).

    Decoded images are cached on disk under ``cache_dir`` (see ``kdistill.data.cache``).
    ``unlabeled`` is a folder of images without labels; ``labeled_fraction`` keeps the labels of
    that share of the train split's patients and moves the rest to the unlabelled pool (a
    simulation of a partly read archive). ``test_match`` is a regex on file names: the train/
    files it matches are the test split (a held-out source) instead of a carved one. ``external``
    lists labelled folders from other sources, decoded for evaluation only (kdistill/data/external.py)."""
    s = settings
    split_args = dict(val_fraction=s.val_fraction, test_fraction=s.test_fraction,
                      min_val_images=s.min_val_images, split_seed=s.split_seed)
    if s.dataset == "digits":
        if s.test_match is not None:
            raise ConfigError("data.test_match: holds out files of a data.root folder by name; "
                              "the built-in digits have no file names")
        classes, splits, info = _digits_splits(s.input_size, **split_args)
    elif s.root is not None:
        classes, splits, info = _folder_splits(Path(s.root), s.patient_regex, test_match=s.test_match,
                                               **split_args)
    else:
        raise DataError("no data: set data.root to a folder or data.dataset to digits")
    positive_class = _check_positive_class(classes, s.positive_class)
    cache = resolve_cache_dir(s.cache_dir)
    decoded = {}
    for name in ("train", "val", "test"):
        part = splits[name]
        part = _limit_per_class(part, s.max_images_per_class, s.split_seed)
        if name == "train" and s.labeled_fraction is not None:
            part, splits["dropped"] = _drop_labels(part, s.labeled_fraction, s.split_seed + 2, info)
        decoded[name] = _decode(part, s.input_size, s.channels, s.on_bad_image, info, name, cache)
    _require_every_class(decoded, classes, info)
    pool = _unlabeled_pool(splits, s.unlabeled, s.input_size, s.channels, s.on_bad_image, info, cache)
    # Every check passed: only now do new decoded images go to the cache.
    loaded = {name: pending.split() for name, pending in decoded.items()}
    info["sizes"] = {name: len(split) for name, split in loaded.items()}
    info["class_counts"] = {name: split.class_counts(len(classes)) for name, split in loaded.items()}
    pool = _join_unlabeled(pool, info)
    others = _external_folders(list(s.external), classes, loaded, s.input_size, s.channels, s.on_bad_image)
    augment = augment_spec(dataclasses.asdict(s.augment), s.hflip)
    return DatasetBundle(classes, positive_class, loaded["train"], loaded["val"], loaded["test"],
                         s.input_size, s.channels, info, s.hflip, augment, None, pool,
                         external=others)


def _external_folders(folders: list[str], classes: list[str], loaded: dict[str, ImageSplit], input_size: int,
                      channels: int, on_bad_image: str) -> list:
    """The ``data.external`` folders, decoded, without copies of the run's own images."""
    if not folders:
        return []
    from kdistill.data.external import folder_names, load_labelled_folder  # external reads this module

    run_files = {name: split.names for name, split in loaded.items()}
    return [load_labelled_folder(folder, name, classes, input_size=input_size, channels=channels,
                                 on_bad_image=on_bad_image, run_files=run_files, key=f"data.external[{index}]")
            for index, (folder, name) in enumerate(zip(folders, folder_names(folders)))]


def dataset_classes(root: str | None = None, dataset: str | None = None) -> list[str]:
    """The class names ``load_dataset`` will find, without decoding an image: the checks that
    need only them (models build, a teacher checkpoint matches) run before anything is cached. A
    folder's layout is checked on the way (train/ present, at least two classes, none empty)."""
    if dataset == "digits":
        return list(DIGIT_CLASSES)
    if root is None:
        raise DataError("no data: set data.root to a folder or data.dataset to digits")
    return scan_dataset_root(Path(root))[0]


def planned_split_counts(root: Path, patient_regex: str, *, val_fraction: float, test_fraction: float,
                         min_val_images: int, split_seed: int, test_match: str | None = None
                         ) -> tuple[list[str], dict[str, list[int]]]:
    """The classes and the per-class image counts of train/val/test as ``load_dataset`` would
    split this folder, before decoding (unreadable files still counted): what ``kdistill doctor``
    checks the validation split's size on."""
    classes, splits, _ = _folder_splits(root, patient_regex, val_fraction=val_fraction,
                                        test_fraction=test_fraction, min_val_images=min_val_images,
                                        split_seed=split_seed, test_match=test_match)
    counts = {name: np.bincount(np.asarray(raw.labels, dtype=np.int64), minlength=len(classes)).tolist()
              for name, raw in splits.items()}
    return classes, counts


def _require_every_class(decoded: dict[str, _Pending], classes: list[str], info: dict) -> None:
    """A split left without one of the classes (its files unreadable, or all from patients carved
    into another split) is an error: training without a class, or a test set that cannot measure
    it, would give numbers that mean nothing."""
    for name, pending in decoded.items():
        counts = np.bincount(np.asarray(pending.raw.labels, dtype=np.int64), minlength=len(classes)).tolist()
        if 0 in counts:
            shown = " / ".join(f"{c} {n}" for c, n in zip(classes, counts))
            raise DataError(f"{name} split: no {classes[counts.index(0)]!r} images ({shown}; "
                            f"{info['sources'].get(name, '')}); unreadable files and patient grouping "
                            f"can empty a class: check the folder with kdistill doctor")


def _drop_labels(raw: _RawSplit, labeled_fraction: float, seed: int, info: dict) -> tuple[_RawSplit, _RawSplit]:
    """Keep the labels of about ``labeled_fraction`` of the patients (stratified); the rest become
    unlabelled images."""
    # grouped_holdout holds out one of round(1 / fraction) folds: hold out the smaller part.
    if labeled_fraction <= 0.5:
        dropped, keep = grouped_holdout(raw.labels, raw.groups, labeled_fraction, seed)
    else:
        keep, dropped = grouped_holdout(raw.labels, raw.groups, 1.0 - labeled_fraction, seed)
    info["sources"]["unlabeled"] = (f"train/ with labels dropped ({1 - labeled_fraction:.0%} of "
                                    f"patients): a simulation")
    return raw.subset(keep), raw.subset(dropped)


def _unlabeled_pool(splits: dict, folder: str | None, size: int, channels: int, on_bad_image: str,
                    info: dict, cache) -> list[_Pending]:
    """The unlabelled images, decoded (not cached yet): train images whose labels were dropped,
    then ``folder``'s images that are not byte-identical to a validation or test image (those would
    leak: dropped)."""
    parts = []
    if "dropped" in splits:
        dropped = splits["dropped"]
        parts.append(_decode(dropped, size, channels, on_bad_image, info, "unlabeled", cache))
    if folder is not None:
        from kdistill.data.doctor import unlabeled_findings  # the doctor reads the data package

        held_out = {name: splits[name].paths for name in ("val", "test")}
        found = unlabeled_findings(Path(folder), held_out)
        leaks = {item["path"] for item in found["duplicates_of_held_out"]}
        for item in found["duplicates_of_held_out"]:
            log.info(f"data.unlabeled: {item['path']} is byte-identical to {item['split']} image "
                     f"{item['same_as']}; left out")
        info["unlabeled_check"] = {k: v for k, v in found.items() if k != "images"}
        paths = [Path(p) for p in found["images"] if p not in leaks]
        if not paths:
            raise DataError(f"data.unlabeled: {folder} holds no usable images")
        raw = _RawSplit(paths, [-1] * len(paths), [str(p) for p in paths])
        parts.append(_decode(raw, size, channels, on_bad_image, info, "unlabeled", cache))
        info["sources"]["unlabeled"] = f"{folder} ({len(parts[-1].raw.labels)} images)"
    return parts


def _join_unlabeled(parts: list[_Pending], info: dict) -> ImageSplit | None:
    """One split of the unlabelled images (label -1), their cache entries written."""
    if not parts:
        return None
    pool = join_splits(*(part.split() for part in parts))
    pool.labels = torch.full_like(pool.labels, -1)
    info["sizes_unlabeled"] = len(pool)
    return pool


def join_splits(*splits: ImageSplit) -> ImageSplit:
    """One split holding the given ones in order; its cache key combines theirs (None if any lacks one)."""
    if len(splits) == 1:
        return splits[0]
    keys = [s.cache_key for s in splits]
    key = None if None in keys else "+".join(keys)
    return ImageSplit(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]),
                      [n for s in splits for n in s.names], [g for s in splits for g in s.groups], key)


def with_unlabeled(data: DatasetBundle) -> DatasetBundle:
    """The data the distilled student trains on: the train split followed by the unlabelled
    images (label -1). Validation and test are unchanged."""
    if data.unlabeled is None:
        return data
    return dataclasses.replace(data, train=join_splits(data.train, data.unlabeled))


@dataclass
class _RawSplit:
    """A split before decoding: file paths (or preloaded images for built-in data)."""

    paths: list[Path]
    labels: list[int]
    groups: list[str]
    images: torch.Tensor | None = None

    def subset(self, indices) -> _RawSplit:
        indices = [int(i) for i in indices]
        images = None if self.images is None else self.images[indices]
        return _RawSplit([self.paths[i] for i in indices], [self.labels[i] for i in indices],
                         [self.groups[i] for i in indices], images)


def _folder_splits(root: Path, patient_regex: str, *, val_fraction: float, test_fraction: float,
                   min_val_images: int, split_seed: int,
                   test_match: str | None = None) -> tuple[list[str], dict, dict]:
    classes, found = scan_dataset_root(root)
    raw = {name: _raw_from_folder(split, patient_regex) for name, split in found.items()}
    info: dict = {"root": str(root), "sources": {"train": "train/"}}
    if test_match is not None:
        raw["train"], raw["test"] = _hold_out_matching(raw, classes, test_match, root)
        info["sources"]["test"] = f"train/ files matching '{test_match}' (a held-out source)"
    elif "test" in raw:
        info["sources"]["test"] = "test/"
    else:
        raw["train"], raw["test"] = _carve(raw["train"], test_fraction, split_seed, "test")
        info["sources"]["test"] = f"carved from train/ ({test_fraction:.0%}, grouped by patient)"
    if "val" in raw and len(raw["val"].labels) >= min_val_images:
        info["sources"]["val"] = "val/"
    else:
        if "val" in raw:
            log.info(f"{root}/val has {len(raw['val'].labels)} images (< data.min_val_images="
                     f"{min_val_images}); not used for selection, carving a validation split")
            info["unused"] = {"val/": len(raw.pop("val").labels)}
        raw["train"], raw["val"] = _carve(raw["train"], val_fraction, split_seed + 1, "val")
        info["sources"]["val"] = f"carved from train/ ({val_fraction:.0%}, grouped by patient)"
    leaks = shared_groups(raw["train"].groups, raw["val"].groups, raw["test"].groups)
    if leaks:
        log.info(f"warning: {len(leaks)} patient keys appear in more than one split "
                 f"(e.g. {sorted(leaks)[0]}); the supplied splits leak patients"
                 + (" (data.test_match assigns files by name)" if test_match is not None else ""))
    info["patients_in_several_splits"] = len(leaks)
    return classes, raw, info


def _digits_splits(input_size: int, *, val_fraction: float, test_fraction: float,
                   min_val_images: int, split_seed: int) -> tuple[list[str], dict, dict]:
    images, labels, classes = digits_images(input_size)
    names = [f"digits[{i}]" for i in range(len(labels))]
    everything = _RawSplit([Path(n) for n in names], labels, names, images)
    train, test = _carve(everything, test_fraction, split_seed, "test")
    train, val = _carve(train, val_fraction, split_seed + 1, "val")
    info = {"root": "digits (scikit-learn, 8x8 upscaled)",
            "sources": {"train": "digits", "val": "carved", "test": "carved"}}
    return classes, {"train": train, "val": val, "test": test}, info


def _raw_from_folder(split: FolderSplit, patient_regex: str) -> _RawSplit:
    keys = merge_identical_files(split.paths, patient_keys(split.paths, patient_regex))
    return _RawSplit(split.paths, split.labels, keys)


def _hold_out_matching(raw: dict[str, _RawSplit], classes: list[str], pattern: str,
                       root: Path) -> tuple[_RawSplit, _RawSplit]:
    """(the rest of train/, its files matching ``pattern``); a test/ folder as well is refused,
    since which of the two is the test split would be a guess."""
    if "test" in raw:
        raise ConfigError(f"data.test_match: {root}/test/ exists too; the held-out files would "
                          f"replace it as the test split, so remove one of the two")
    train = raw["train"]
    keep, held = matching_holdout(train.paths, train.labels, classes, pattern)
    log.debug(f"held out test: {len(held)} train/ files matching '{pattern}'")
    return train.subset(keep), train.subset(held)


def _carve(raw: _RawSplit, fraction: float, seed: int, what: str) -> tuple[_RawSplit, _RawSplit]:
    keep, held = grouped_holdout(raw.labels, raw.groups, fraction, seed)
    log.debug(f"carved {what}: {len(held)} images from {len(raw.labels)}")
    return raw.subset(keep), raw.subset(held)


def _limit_per_class(raw: _RawSplit, limit: int | None, seed: int) -> _RawSplit:
    if limit is None:
        return raw
    rng = np.random.default_rng(seed)
    labels = np.asarray(raw.labels)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.extend(rng.permutation(members)[:limit].tolist())
    return raw.subset(sorted(chosen))


@dataclass
class _Pending:
    """A split decoded, its readable files in ``raw``; its cache entry is written by ``split()``."""

    raw: _RawSplit
    decoded: Decoded | None  # None for built-in data, which is decoded already

    def split(self) -> ImageSplit:
        raw = self.raw
        if self.decoded is None:
            return ImageSplit(raw.images, torch.tensor(raw.labels), [str(p) for p in raw.paths], raw.groups)
        images, key = commit(self.decoded)
        return ImageSplit(images, torch.tensor(raw.labels), [str(p) for p in raw.paths], raw.groups, key)


def _decode(raw: _RawSplit, size: int, channels: int, on_bad_image: str, info: dict,
            split_name: str, cache_dir: Path | None = None) -> _Pending:
    if raw.images is not None:  # built-in data is already decoded
        return _Pending(raw, None)
    decoded = decode_uncommitted(raw.paths, size, channels, on_bad_image, cache_dir, f"decoding {split_name}")
    for path, reason in decoded.bad:
        log.info(f"skipping {path}: {reason}")
        info.setdefault("skipped_files", []).append(str(path))
    raw = raw.subset(decoded.kept)
    if not raw.labels:
        raise DataError(f"{split_name} split: no readable images")
    return _Pending(raw, decoded)


def _check_positive_class(classes: list[str], positive_class: str | None) -> str | None:
    if positive_class is not None and positive_class not in classes:
        raise DataError(f"data.positive_class: {positive_class!r} is not one of the classes {classes}")
    if positive_class is None and len(classes) == 2:
        return classes[1]
    return positive_class if len(classes) == 2 else None


def load_eval_folder(folder: Path, classes: list[str], input_size: int, channels: int,
                     on_bad_image: str = "skip") -> tuple[ImageSplit, list[str]]:
    """Load a folder for evaluation: ``FOLDER/<class>/`` or a dataset root with ``test/``.
    Returns the split and the unreadable files that were skipped."""
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found")
    folder = eval_class_folder(folder, classes)
    found = class_names(folder)
    if found != classes:
        raise DataError(f"{folder}: classes {found} differ from the checkpoint's classes {classes}")
    split = scan_split(folder, classes)
    return decode_labelled_files(split.paths, split.labels, input_size, channels, on_bad_image, str(folder))


def decode_labelled_files(paths: list[Path], labels: list[int], input_size: int, channels: int,
                          on_bad_image: str, what: str) -> tuple[ImageSplit, list[str]]:
    """Decode labelled files into a split (in memory; each file its own group), and the unreadable
    files that were skipped; ``what`` names the files in errors."""
    raw = _RawSplit(list(paths), list(labels), [p.name for p in paths])
    info: dict = {}
    loaded = _decode(raw, input_size, channels, on_bad_image, info, what).split()
    return loaded, info.get("skipped_files", [])


def eval_class_folder(folder: Path, classes: list[str]) -> Path:
    """The folder holding the class sub-folders: ``folder`` itself, or a dataset root's ``test/``."""
    if (folder / "test").is_dir() and not (folder / classes[0]).is_dir():
        return folder / "test"
    return folder


def iterate_batches(
    split: ImageSplit,
    batch_size: int,
    *,
    channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    shuffle: bool = False,
    augment: bool = False,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
    to_input: Callable[[torch.Tensor], object] | None = None,
    shard: Callable[[torch.Tensor], torch.Tensor] | None = None,
    views: torch.Tensor | None = None,
    view_ids: torch.Tensor | None = None,
    bank_images: torch.Tensor | None = None,
) -> Iterator[Batch]:
    """Yield normalized batches; shuffling and flips draw from ``generator`` so they replay exactly.
    ``channels_last`` lays the images out NHWC (training: the convolutions run faster on CPU).
    ``to_input`` replaces the normalization: it turns the uint8 ``[B, S, H, W]`` batch into what
    the model takes (a model's own fast input form).
    ``shard`` picks this process's part of the drawn order (distributed training); every process
    draws the same permutation and flips, so the parts are disjoint.
    ``views`` (``[N, VIEW_WIDTH]``, one per image, kdistill/data/views.py) renders each image's view
    instead of the flips (``augment`` is then ignored); ``view_ids`` (``[N]``) records which bank
    column each came from, in ``Batch.view``. With ``bank_images`` (the materialized bank,
    ``[N, K, S, H, W]`` uint8) each image's view is read from it at ``view_ids`` instead of
    rendered, and the batch takes the uint8 path (``to_input`` included)."""
    count = len(split)
    if (shuffle or augment) and generator is None:
        raise ValueError("shuffle/augment need a seeded generator")
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    flips = random_flips(count, generator) if augment and views is None else torch.zeros(count, dtype=torch.bool)
    if shard is not None:
        order = shard(order)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        if views is not None and bank_images is not None:
            yield _stored_view_batch(split, index, views, view_ids, bank_images, channels, mean, std,
                                     channels_last, to_input)
            continue
        if views is not None:
            yield _view_batch(split, index, views, view_ids, channels, mean, std, channels_last)
            continue
        flipped = flips[index]
        images = _as_model_input(apply_flips(split.images[index], flipped), to_input, channels, mean, std,
                                 channels_last)
        yield Batch(images, split.labels[index], index, flipped)


def _as_model_input(images: torch.Tensor, to_input, channels: int, mean, std, channels_last: bool):
    """A uint8 batch as the model takes it: its own fast form (``to_input``) or normalized floats."""
    if to_input is not None:
        return to_input(images)
    images = to_model_input(images, channels, mean, std)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _view_batch(split: ImageSplit, index: torch.Tensor, views: torch.Tensor, view_ids, channels: int,
                mean, std, channels_last: bool) -> Batch:
    """The batch of ``index`` rendered in its views: normalized images, with the mixing partners'
    labels and lambdas when any view is mixed."""
    chosen = views[index]
    images = render_views(split.images[index], chosen, split.images, out_size=split.images.shape[-1],
                          channels=channels, mean=mean, std=std)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return _batch_of_views(split, index, chosen, view_ids, images)


def _stored_view_batch(split: ImageSplit, index: torch.Tensor, views: torch.Tensor, view_ids, bank_images,
                       channels: int, mean, std, channels_last: bool, to_input) -> Batch:
    """The batch of ``index`` in its views, read from the materialized bank: a plain uint8 batch."""
    if view_ids is None:
        raise ValueError("a materialized view bank needs the bank columns of the views (view_ids)")
    images = _as_model_input(bank_images[index, view_ids[index]], to_input, channels, mean, std, channels_last)
    return _batch_of_views(split, index, views[index], view_ids, images)


def _batch_of_views(split: ImageSplit, index: torch.Tensor, chosen: torch.Tensor, view_ids,
                    images) -> Batch:
    """A batch of views ``chosen`` with the mixing partners' labels and lambdas when any is mixed."""
    partner = chosen[:, PARTNER].long()
    mixed = partner >= 0
    labels = split.labels[index]
    partner_labels = mix_lambda = None
    if bool(mixed.any()):
        partner_labels = torch.where(mixed, split.labels[partner.clamp(min=0)], labels)
        mix_lambda = chosen[:, LAMBDA].clone()
    # A row is labelled when its image is, and its mixing partner too (a mixed target needs both).
    labeled = (labels >= 0) & (partner_labels is None or partner_labels >= 0)
    return Batch(images, labels, index, chosen[:, FLIP] > 0.5,
                 None if view_ids is None else view_ids[index], labeled, partner_labels, mix_lambda)


def epoch_views(data: DatasetBundle, generator: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One epoch's view of every training image, ``([N, VIEW_WIDTH], bank columns [N] or None)``:
    one view per image drawn from the bank, or fresh views of ``data.augment``; ``(None, None)``
    for flips only (the reference augmentation, drawn by ``iterate_batches`` itself)."""
    count = len(data.train)
    if data.bank is not None:
        if len(data.bank) != count:
            raise ValueError(f"the view bank has {len(data.bank)} rows for {count} training images")
        column = torch.randint(data.bank.shape[1], (count,), generator=generator)
        return data.bank[torch.arange(count), column], column
    if data.augment is None or data.augment.flip_only():
        return None, None
    # Mixing partners come from the labelled images, which lead the split.
    labelled = int((data.train.labels >= 0).sum())
    return draw_views(count, generator, data.augment, partner_count=labelled or count), None
