"""What the students see and what the teacher provides: the students' channels, training images
and views (unlabelled images, the view bank and its rendered uint8 copy), and the teacher's outputs
a distillation method reads (cached table, live teacher, or live teacher with feature hooks); and
the checks that the configured methods take this data (unlabelled rows, mixed views) and teacher."""

from __future__ import annotations

import dataclasses
import time

import torch

from kdistill.config import Config
from kdistill.data import DatasetBundle
from kdistill.data.cache import resolve_cache_dir
from kdistill.data.datasets import with_unlabeled
from kdistill.data.transforms import normalization
from kdistill.data.views import VIEW_WIDTH, AugmentSpec, draw_views, materialize_views, materialized_bytes
from kdistill.distill.method_runs import distilled_runs
from kdistill.distill.registry import distilling_methods, needs_of, takes_mixed, takes_unlabeled
from kdistill.distill.teacher import (FLIP_VIEWS, CachedTeacher, FeatureTeacher, LiveTeacher, StoredEmbeddingTeacher,
                                     tensor_sha256)
from kdistill.errors import ConfigError
from kdistill.log import log
from kdistill.models.channels import ChannelAdapter


def student_channels(config: Config) -> int:
    """The student's input channels: ``student.channels``, else ``data.channels``."""
    return config.student.channels or config.data.channels


def student_data(config: Config, data: DatasetBundle, role: str = "distilled") -> DatasetBundle:
    """The data as the student reads it: same splits, batches built for the student's channels
    (and their normalization). The stored images serve both: one grayscale channel is expanded,
    colour images are averaged, at batch time. Its training views: see ``student_views``."""
    channels = student_channels(config)
    data = data if channels == data.channels else dataclasses.replace(data, channels=channels)
    return student_views(config, data, role)


def student_views(config: Config, data: DatasetBundle, role: str) -> DatasetBundle:
    """The students' training images and views. The distilled student also trains on the
    unlabelled images; the baseline never does. Under a view bank both draw from the same bank;
    with a live teacher both see fresh views of ``data.augment`` every step; with the teacher's
    flip table both see flips only (the table holds no other view)."""
    bank = view_bank(config, data)
    bank_images = None if bank is None else materialized_bank(config, data, bank)
    data = with_unlabeled(data) if role == "distilled" else dataclasses.replace(data, unlabeled=None)
    if bank is not None:
        rows = len(data.train)  # the baseline's rows lead the distilled student's
        return dataclasses.replace(data, bank=bank[:rows],
                                   bank_images=None if bank_images is None else bank_images[:rows])
    if config.distill.teacher_cache:
        return dataclasses.replace(data, augment=None)
    return data


def view_bank(config: Config, data: DatasetBundle) -> torch.Tensor | None:
    """``distill.bank_views`` views per image (``[N, K, VIEW_WIDTH]``) drawn from
    ``distill.bank_seed``: the train split's rows first, then the unlabelled images', so the
    baseline's rows are the distilled student's first rows. Mixing partners are labelled images."""
    count = config.distill.bank_views
    if not count:
        return None
    if not config.distill.teacher_cache:
        raise ConfigError("distill.bank_views: a view bank replays stored teacher outputs; with "
                          "distill.teacher_cache=false the live teacher sees fresh views instead (set one)")
    generator = torch.Generator().manual_seed(config.distill.bank_seed)
    spec = data.augment or AugmentSpec(hflip=data.hflip)
    labelled = len(data.train)
    parts = [draw_views(labelled * count, generator, spec, partner_count=labelled)]
    if data.unlabeled is not None:
        parts.append(draw_views(len(data.unlabeled) * count, generator, spec, partner_count=labelled))
    return torch.cat(parts).view(-1, count, VIEW_WIDTH)


# The last materialized bank, with its key: every student and the teacher table read one copy.
_MATERIALIZED: dict = {}


def materialized_bank(config: Config, data: DatasetBundle, bank: torch.Tensor) -> torch.Tensor | None:
    """The view bank rendered once as uint8 images ``[N, K, S, H, W]`` over the train then the
    unlabelled images, or None (each batch renders its views) when it would take more than
    ``distill.bank_memory_mb``."""
    train = with_unlabeled(data).train
    needed_mb = materialized_bytes(train.images, bank.shape[1]) / 1e6
    if needed_mb > config.distill.bank_memory_mb:
        log.info(f"view bank: materialized it would take {needed_mb:.0f} MB > distill.bank_memory_mb="
                 f"{config.distill.bank_memory_mb}; rendering each batch's views instead")
        return None
    key = (tensor_sha256(bank), tensor_sha256(train.images))
    if _MATERIALIZED.get("key") != key:
        _MATERIALIZED.clear()  # one bank at a time: drop the old one before building the new
        started = time.perf_counter()
        images = materialize_views(train.images, bank, train.images)
        log.info(f"view bank: {bank.shape[1]} views of {len(train)} images rendered to uint8 "
                 f"({needed_mb:.0f} MB) in {time.perf_counter() - started:.1f}s")
        _MATERIALIZED.update(key=key, images=images)
    return _MATERIALIZED["images"]


NEEDS_LABELS = ("needs a label on every image; data.unlabeled / data.labeled_fraction work with a "
                "method whose distillation term reads no label")


def check_unlabeled_method(config: Config, data: DatasetBundle) -> None:
    """Images without labels train only through a distillation term that reads no label; the
    methods say whether theirs does (``takes_unlabeled``)."""
    if data.unlabeled is not None or bool((data.train.labels < 0).any()):
        _require(config, takes_unlabeled, NEEDS_LABELS)


def check_methods_take_unlabeled(config: Config) -> None:
    """:func:`check_unlabeled_method` from the config alone (``data.unlabeled`` or
    ``data.labeled_fraction`` set), so a run refuses before decoding any image; and mixed views
    (``data.augment.mix``) only for methods that take them (``takes_mixed``)."""
    if config.data.unlabeled is not None or config.data.labeled_fraction is not None:
        _require(config, takes_unlabeled, NEEDS_LABELS)
    if config.data.augment.mix != "none":
        _require(config, takes_mixed, f"reads the hard label, which a mixed view "
                 f"(data.augment.mix={config.data.augment.mix}) does not have; use data.augment.mix=none")


def check_methods_take_ensemble(config: Config) -> None:
    """An ensemble teacher answers with class probabilities only: a method that reads a teacher's
    features or embedding needs one teacher (the members' layers differ)."""
    if config.teacher.members:
        _require(config, lambda method: not needs_of(method) - {"logits"},
                 "reads the teacher's features, which an ensemble teacher (teacher.members) does not "
                 "have; use one teacher or a method that reads its logits only")


def _require(config: Config, supports, problem: str) -> None:
    """A ConfigError naming the first distilled method ``supports(method)`` refuses."""
    key = "distill.method" if config.distill.methods is None else "distill.methods"
    for method, _ in distilled_runs(config):
        if not supports(method):
            able = ", ".join(name for name in distilling_methods() if supports(name))
            raise ConfigError(f"{key}: {method} {problem} ({able})")


def prepare_teacher_outputs(teacher, data: DatasetBundle, config: Config, method: str | None = None):
    """What the distillation loss reads the teacher's outputs from: a live teacher, or (the default)
    its outputs per view, computed once and cached (kdistill/distill/teacher.py): logits, or the
    pooled embedding for a method that reads only that. ``data`` is the teacher's view of the data;
    a live teacher fed a grayscale student's batches runs behind an exact channel adapter. A method
    that reads other features gets the live teacher with hooks (a cache of full-resolution feature
    maps per view would not fit in memory)."""
    method = method or config.distill.method
    kind = teacher_output_kind(method, config)
    if kind == "features":
        if config.distill.teacher_cache:
            log.info(f"{method}: reads teacher features, so the teacher runs live every step "
                     f"(distill.teacher_cache ignored for it)")
        return FeatureTeacher(live_teacher_input(teacher, data, student_channels(config)))
    if not config.distill.teacher_cache:
        return LiveTeacher(live_teacher_input(teacher, data, student_channels(config)))
    mean, std = data.normalization
    started = time.perf_counter()
    bank = view_bank(config, data)
    train = with_unlabeled(data).train  # the distilled student's images: train, then unlabelled
    stored = StoredEmbeddingTeacher if kind == "embedding" else CachedTeacher
    outputs = stored(teacher, train, channels=data.channels, mean=mean, std=std,
                     cache_dir=resolve_cache_dir(config.data.cache_dir), dtype=config.distill.cache_dtype,
                     views=FLIP_VIEWS if bank is None else bank,
                     bank_images=None if bank is None else materialized_bank(config, data, bank))
    log.info(f"teacher {'embeddings' if kind == 'embedding' else 'outputs'} for {len(train)} images x "
             f"{outputs.table.shape[1]} views ready in {time.perf_counter() - started:.1f}s "
             f"({_megabytes(outputs.table):.0f} MB; computed or read from the cache)")
    return outputs


def teacher_output_kind(method: str, config: Config) -> str:
    """``logits`` (cached or live), ``embedding`` (the pooled embedding stored per view) or
    ``features`` (the live teacher with hooks), for ``method`` under this config."""
    needs = needs_of(method)
    if "embedding" in needs and config.distill.teacher_cache:
        configured = (config.distill.params.get(method) or {}).get("teacher_embedding")
        if configured is None:  # the default layer (the head's input): storable
            return "embedding"
    return "features" if "features" in needs else "logits"


def _megabytes(table: torch.Tensor) -> float:
    return table.numel() * table.element_size() / 1e6


def teacher_outputs_for(method: str, teacher, data: DatasetBundle, config: Config, prepared: dict):
    """The teacher outputs ``method`` reads, prepared once per kind into ``prepared``."""
    kind = teacher_output_kind(method, config)
    if kind not in prepared:
        prepared[kind] = prepare_teacher_outputs(teacher, data, config, method)
    return prepared[kind]


def live_teacher_input(teacher: torch.nn.Module, data: DatasetBundle, channels: int) -> torch.nn.Module:
    """The teacher as it runs on batches made for a ``channels``-channel student: itself when the
    channels agree, else wrapped in a ``ChannelAdapter`` (1-channel student, 3-channel teacher)."""
    if channels == data.channels:
        return teacher
    if channels != 1:
        raise ConfigError(f"student.channels: {channels} with a {data.channels}-channel teacher needs "
                          f"distill.teacher_cache=true (a live teacher adapts 1 channel to 3 only)")
    (mean_in, std_in), (mean_out, std_out) = normalization(channels), data.normalization
    return ChannelAdapter(teacher, mean_in=mean_in, std_in=std_in, mean_out=mean_out, std_out=std_out)
