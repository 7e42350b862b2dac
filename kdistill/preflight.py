"""Input checks a run makes before any image is decoded or anything written: device and precision,
the methods take the data, each model builds for the data's classes and input (within the
student's budget), a given teacher checkpoint matches them; and the data summary logged at the
start. (That every split holds every class is checked by the loader, before it caches images.)"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from kdistill.config import Config, teacher_members
from kdistill.data import DatasetBundle
from kdistill.data.external import class_folder
from kdistill.data.datasets import dataset_classes
from kdistill.deploy.budget import enforce_budget
from kdistill.distill.inputs import check_methods_take_ensemble, check_methods_take_unlabeled, student_channels
from kdistill.engine import distributed
from kdistill.engine.precision import check_precision, resolve_device
from kdistill.errors import CheckpointError, ConfigError
from kdistill.log import log
from kdistill.models import build_model
from kdistill.models.checkpoint import read_meta
from kdistill.models.stages import partial_trainable
from kdistill.models.weights import DOWNLOAD, PACKAGED, packaged_weights_file, weight_source


@dataclass(frozen=True)
class DataShape:
    """What the model checks read of the data, known before any image is decoded."""

    classes: list[str]
    input_size: int
    channels: int


def check_before_data(config: Config, roles: tuple[str, ...], budget: bool = True) -> None:
    """Every check that needs no decoded image, for the models ``roles`` names: run first, so a
    refused run has decoded, cached and written nothing."""
    check_precision(resolve_device(config.device), config.precision)
    check_methods_take_unlabeled(config)
    check_methods_take_ensemble(config)
    classes = dataset_classes(config.data.root, config.data.dataset)
    check_labelled_folders(config, classes)
    check_models_build(config, DataShape(classes, config.data.input_size, config.data.channels), roles, budget)


def check_labelled_folders(config: Config, classes: list[str]) -> None:
    """The external test sets and the site's calibration sample exist and hold the run's classes."""
    for index, folder in enumerate(config.data.external):
        class_folder(Path(folder), classes, f"data.external[{index}]")
    if config.calibration.site is not None:
        class_folder(Path(config.calibration.site), classes, "calibration.site")


def check_models_build(config: Config, data: DatasetBundle | DataShape, roles: tuple[str, ...],
                       budget: bool = True) -> None:
    """Each role's model name and model_args build for this data, a teacher checkpoint matches the
    data, and the teacher's starting weights are at hand: a local file loads into it, a weights package is
    installed, downloaded ImageNet weights are fetched now (into torchvision's or timm's cache, where
    training finds them), so an offline run fails before anything is written. ``budget``: the
    student must also meet ``student.budget``."""
    for role in roles:
        if role == "teacher" and config.teacher.members:  # an ensemble: each member is a model
            models = [(f"teacher.members[{k}]", member) for k, member in enumerate(teacher_members(config.teacher))]
        else:
            models = [(role, getattr(config, role))]
        for key, cfg in models:
            _check_model_builds(role, key, cfg, config, data, budget)


def _check_model_builds(role: str, key: str, cfg, config: Config, data: DatasetBundle | DataShape,
                        budget: bool) -> None:
    """One model of ``check_models_build``; ``key`` names its settings in errors (``teacher``,
    ``teacher.members[1]``, ``student``)."""
    if role == "teacher" and cfg.checkpoint:
        check_same_data(read_meta(Path(cfg.checkpoint)), data, cfg.checkpoint)
        return
    if role == "teacher" and cfg.weights and not Path(cfg.weights).is_file():
        raise ConfigError(f"{key}.weights: {cfg.weights} not found")
    if role == "teacher" and cfg.pretrained and not cfg.weights and cfg.model in PACKAGED:
        packaged_weights_file(cfg.model)  # a missing package is named before anything is written
    channels = data.channels if role == "teacher" else student_channels(config)
    download = role == "teacher" and weight_source(cfg.model, cfg.pretrained, cfg.weights) is DOWNLOAD
    try:
        with distributed.main_first(distributed.current()):  # under torchrun one rank downloads
            model = build_model(cfg.model, len(data.classes), input_size=data.input_size,  # loads teacher.weights
                                in_channels=channels, pretrained=download,
                                weights=cfg.weights if role == "teacher" else None, **cfg.model_args)
    except TypeError as exc:  # an argument the model does not take
        raise ConfigError(f"{key}.model_args: {cfg.model_args} ({exc})") from None
    except ConfigError as exc:  # an unknown name: say which key holds it
        raise ConfigError(f"{key}.model: {exc}" if str(exc).startswith("model ") else str(exc)) from None
    if role == "teacher" and cfg.mode == "partial":  # stages exist, prefixes name modules
        partial_trainable(model, cfg.trainable_blocks, cfg.trainable_prefixes)
    if role == "student" and budget:  # refused before anything trains
        enforce_budget(model, cfg.model, **dataclasses.asdict(cfg.budget), input_size=data.input_size,
                       channels=channels, num_classes=len(data.classes))


def check_same_data(meta: dict, data: DatasetBundle | DataShape, where: str) -> None:
    for key, value in (("classes", data.classes), ("input_size", data.input_size), ("channels", data.channels)):
        if meta[key] != value:
            raise CheckpointError(f"teacher.checkpoint {where}: {key} {meta[key]} != this data's {value}")


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
