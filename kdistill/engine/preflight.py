"""Input checks a run makes before anything is written or trained: every split holds every class,
each model builds for this data (within the student's budget), a given teacher checkpoint matches
the data; and the data summary logged at the start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kdistill.config import Config
from kdistill.data import DatasetBundle
from kdistill.deploy.budget import enforce_budget
from kdistill.distill.setup import student_channels
from kdistill.engine import distributed
from kdistill.errors import CheckpointError, ConfigError, DataError
from kdistill.log import log
from kdistill.models import build_model
from kdistill.models.checkpoint import read_meta
from kdistill.models.stages import partial_trainable
from kdistill.models.weights import DOWNLOAD, PACKAGED, packaged_weights_file, weight_source


def check_models_build(config: Config, data: DatasetBundle, roles: tuple[str, ...]) -> None:
    """Each role's model name and model_args build for this data, a teacher checkpoint matches the
    data, and the teacher's starting weights are at hand: a local file exists, a weights package is
    installed, downloaded ImageNet weights are fetched now (into torchvision's or timm's cache, where
    training finds them), so an offline run fails before anything is written."""
    for role in roles:
        cfg = getattr(config, role)
        if role == "teacher" and cfg.checkpoint:
            check_same_data(read_meta(Path(cfg.checkpoint)), data, cfg.checkpoint)
            continue
        if role == "teacher" and cfg.weights and not Path(cfg.weights).is_file():
            raise ConfigError(f"teacher.weights: {cfg.weights} not found")
        if role == "teacher" and cfg.pretrained and not cfg.weights and cfg.model in PACKAGED:
            packaged_weights_file(cfg.model)  # a missing package is named before anything is written
        channels = data.channels if role == "teacher" else student_channels(config)
        download = role == "teacher" and weight_source(cfg.model, cfg.pretrained, cfg.weights) is DOWNLOAD
        try:
            with distributed.main_first(distributed.current()):  # under torchrun one rank downloads
                model = build_model(cfg.model, len(data.classes), input_size=data.input_size,
                                    in_channels=channels, pretrained=download, **cfg.model_args)
        except TypeError as exc:  # an argument the model does not take
            raise ConfigError(f"{role}.model_args: {cfg.model_args} ({exc})") from None
        except ConfigError as exc:  # an unknown name: say which key holds it
            raise ConfigError(f"{role}.model: {exc}" if str(exc).startswith("model ") else str(exc)) from None
        if role == "teacher" and cfg.mode == "partial":  # stages exist, prefixes name modules
            partial_trainable(model, cfg.trainable_blocks, cfg.trainable_prefixes)
        if role == "student":  # refused before anything trains
            enforce_budget(model, cfg.model, **dataclasses.asdict(cfg.budget), input_size=data.input_size,
                           channels=channels, num_classes=len(data.classes))


def check_same_data(meta: dict, data: DatasetBundle, where: str) -> None:
    for key, value in (("classes", data.classes), ("input_size", data.input_size), ("channels", data.channels)):
        if meta[key] != value:
            raise CheckpointError(f"teacher.checkpoint {where}: {key} {meta[key]} != this data's {value}")


def require_every_class(data: DatasetBundle) -> None:
    """A split left without one of the classes (its files unreadable, or all from patients carved
    into another split) is an error: training without a class, or a test set that cannot measure
    it, would give numbers that mean nothing."""
    for name, split in _splits(data):
        counts = split.class_counts(len(data.classes))
        if 0 in counts:
            raise DataError(f"{name} split: no {data.classes[counts.index(0)]!r} images "
                            f"({_class_counts(data, split)}; {data.info['sources'].get(name, '')}); "
                            f"unreadable files and patient grouping can empty a class: check the "
                            f"folder with kdistill doctor")


def log_data(data: DatasetBundle) -> None:
    for name, split in _splits(data):
        log.info(f"data {name}: {len(split)} images ({_class_counts(data, split)}); "
                 f"{data.info['sources'].get(name, '')}")
    skipped = data.info.get("skipped_files", [])
    if skipped:
        log.info(f"data: {len(skipped)} unreadable files skipped (listed in results.json)")
    if data.unlabeled is not None:
        log.info(f"data unlabeled: {len(data.unlabeled)} images (distilled student only); "
                 f"{data.info['sources'].get('unlabeled', '')}")


def _splits(data: DatasetBundle) -> tuple:
    return ("train", data.train), ("val", data.val), ("test", data.test)


def _class_counts(data: DatasetBundle, split) -> str:
    return " / ".join(f"{c} {n}" for c, n in zip(data.classes, split.class_counts(len(data.classes))))
