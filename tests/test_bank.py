"""The view bank: the stored teacher output of every view equals a live teacher's on that view."""

import dataclasses

import pytest
import torch
from torch import nn

from kdistill.data import DatasetBundle, ImageSplit
from kdistill.config import load_config
from kdistill.data.transforms import normalization, to_model_input
from kdistill.data.views import (FLIP, MIX, VIEW_WIDTH, AugmentSpec, draw_views, materialize_views, plain_views,
                                 render_views)
from kdistill.distill import CachedTeacher
from kdistill.distill.teacher import freeze
from kdistill.engine.loop import training_batches
from kdistill.models import build_model
from kdistill.models.fast_path import set_fast_path
from kdistill.models.reference.pixel_blocks import BlockImages
from kdistill.distill.inputs import materialized_bank

MEAN, STD = normalization(3)
SIZE, COUNT = 20, 10
KINDS = {
    "plain": AugmentSpec(hflip=False),
    "flip": AugmentSpec(hflip=True),
    "crop": AugmentSpec(hflip=False, scale=(0.3, 0.6)),
    "rotation": AugmentSpec(hflip=False, rotation=30),
    "intensity": AugmentSpec(hflip=False, brightness=0.5, contrast=0.5),
    "mixup": AugmentSpec(hflip=False, mix="mixup", mix_alpha=1.0),
    "cutmix": AugmentSpec(hflip=False, mix="cutmix", mix_alpha=1.0),
}


def teacher_model():
    torch.manual_seed(0)
    return freeze(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                nn.Flatten(), nn.Linear(32, 3)))


def split(key="images-key"):
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (COUNT, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    labels = torch.arange(COUNT) % 3
    names = [f"img{i}" for i in range(COUNT)]
    return ImageSplit(images, labels, names, names, key)


def bank_of(spec, views_per_image=3, seed=0):
    drawn = draw_views(COUNT * views_per_image, torch.Generator().manual_seed(seed), spec, partner_count=COUNT)
    return drawn.view(COUNT, views_per_image, VIEW_WIDTH)


@pytest.mark.parametrize("kind", list(KINDS))
def test_bank_table_equals_a_live_teacher_on_each_view(kind):
    model, data = teacher_model(), split(key=None)
    bank = bank_of(KINDS[kind])
    if kind == "flip":
        assert bank[..., FLIP].sum() > 0
    if kind in ("mixup", "cutmix"):
        assert (bank[..., MIX] > 0).all()
    cached = CachedTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank, batch_size=4)
    for image in range(COUNT):  # one image at a time: another batch composition than the table's
        for column in range(bank.shape[1]):
            view = bank[image, column][None]
            rendered = render_views(data.images[[image]], view, data.images, out_size=SIZE, channels=3,
                                    mean=MEAN, std=STD)
            with torch.no_grad():
                live = model(rendered)
            assert (cached.table[image, column] - live[0]).abs().max() <= 1e-4, (kind, image, column)


def test_training_batches_from_the_bank_replay_the_live_teacher():
    model, data = teacher_model(), split(key=None)
    bank = bank_of(dataclasses.replace(KINDS["crop"], rotation=7, hflip=True, mix="mixup"), views_per_image=4)
    bundle = DatasetBundle(["a", "b", "c"], None, data, data, data, SIZE, 3, {}, True,
                           augment=None, bank=bank)
    cached = CachedTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank)
    seen = set()
    for batch in training_batches(nn.Identity(), cached, bundle, 4, torch.Generator().manual_seed(5)):
        with torch.no_grad():
            live = model(batch.images)
        assert (cached(batch) - live).abs().max() <= 1e-4
        seen.update(batch.view.tolist())
    assert len(seen) > 1  # views drawn from several bank columns


def test_key_covers_the_bank_and_float16_applies(tmp_path):
    model, data = teacher_model(), split()
    first = CachedTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank_of(KINDS["crop"], seed=0),
                          cache_dir=tmp_path)
    again = CachedTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank_of(KINDS["crop"], seed=0),
                          cache_dir=tmp_path)
    assert torch.equal(first.table, again.table)
    assert len(list((tmp_path / "teacher").iterdir())) == 1  # the second read the stored table
    other = CachedTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank_of(KINDS["crop"], seed=1),
                          cache_dir=tmp_path)
    assert len(list((tmp_path / "teacher").iterdir())) == 2
    assert not torch.allclose(first.table, other.table)
    half = CachedTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank_of(KINDS["crop"], seed=0),
                         cache_dir=tmp_path, dtype="float16")
    assert half.table.dtype == torch.float16
    assert torch.allclose(half.table.float(), first.table, atol=1e-2, rtol=1e-2)


def test_plain_bank_matches_the_flip_table():
    model, data = teacher_model(), split(key=None)
    bank = plain_views(COUNT * 2).view(COUNT, 2, VIEW_WIDTH)
    bank[:, 1, FLIP] = 1.0
    per_image = CachedTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank)
    flips = CachedTeacher(model, data, channels=3, mean=MEAN, std=STD)
    assert (per_image.table - flips.table).abs().max() <= 1e-5


# --- the materialized bank: every view rendered once to uint8 ---------------------------------

def _raw_view(images, view, partners):
    """A view's float render before normalization (values in [0, 255]): the normalization undone."""
    rendered = render_views(images, view, partners, out_size=SIZE, channels=3, mean=MEAN, std=STD)
    return rendered * torch.tensor(STD).view(1, -1, 1, 1) * 255 + torch.tensor(MEAN).view(1, -1, 1, 1) * 255


@pytest.mark.parametrize("kind", list(KINDS))
def test_materialized_views_are_the_float_render_rounded(kind):
    data, bank = split(key=None), bank_of(KINDS[kind])
    stored = materialize_views(data.images, bank, data.images, chunk=3)  # chunks: another batching
    assert stored.dtype == torch.uint8 and stored.shape == (COUNT, 3, 3, SIZE, SIZE)
    for image in range(COUNT):
        for column in range(bank.shape[1]):
            raw = _raw_view(data.images[[image]], bank[image, column][None], data.images)[0]
            assert (stored[image, column].float() - raw).abs().max() <= 0.5 + 1e-3, (kind, image, column)


@pytest.mark.parametrize("kind", list(KINDS))
def test_table_from_materialized_views_equals_a_live_teacher_on_them(kind):
    model, data, bank = teacher_model(), split(key=None), bank_of(KINDS[kind])
    stored = materialize_views(data.images, bank, data.images)
    cached = CachedTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank, batch_size=4,
                           bank_images=stored)
    for image in range(COUNT):
        for column in range(bank.shape[1]):
            with torch.no_grad():
                live = model(to_model_input(stored[image, column][None], 3, MEAN, STD))
            assert (cached.table[image, column] - live[0]).abs().max() <= 1e-4, (kind, image, column)


def test_training_batches_read_the_materialized_bank_and_replay_the_live_teacher():
    model, data = teacher_model(), split(key=None)
    bank = bank_of(dataclasses.replace(KINDS["crop"], rotation=7, hflip=True, mix="mixup"), views_per_image=4)
    stored = materialize_views(data.images, bank, data.images)
    bundle = DatasetBundle(["a", "b", "c"], None, data, data, data, SIZE, 3, {}, True,
                           augment=None, bank=bank, bank_images=stored)
    cached = CachedTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank, bank_images=stored)
    seen = set()
    for batch in training_batches(nn.Identity(), cached, bundle, 4, torch.Generator().manual_seed(5)):
        expected = to_model_input(stored[batch.index, batch.view], 3, MEAN, STD)
        assert torch.equal(batch.images, expected)  # the stored view itself, not a new render
        with torch.no_grad():
            live = model(batch.images)
        assert (cached(batch) - live).abs().max() <= 1e-4
        assert batch.mix_lambda is not None  # mixing labels still travel with the batch
        seen.update(batch.view.tolist())
    assert len(seen) > 1


def test_the_students_fast_path_runs_on_the_materialized_bank():
    student = set_fast_path(build_model("reference_student", 3, input_size=SIZE), "auto").train()
    gray = ImageSplit(split().images[:, :1].contiguous(), torch.arange(COUNT) % 3,
                      [str(i) for i in range(COUNT)], [str(i) for i in range(COUNT)])
    bank = bank_of(KINDS["crop"])
    bundle = DatasetBundle(["a", "b", "c"], None, gray, gray, gray, SIZE, 3, {}, True, bank=bank,
                           bank_images=materialize_views(gray.images, bank, gray.images))
    batches = list(training_batches(student, None, bundle, 4, torch.Generator().manual_seed(0)))
    assert {type(b.images) for b in batches} == {BlockImages}
    unstored = dataclasses.replace(bundle, bank_images=None)  # rendered per batch: normalized tensors
    assert {type(b.images) for b in training_batches(student, None, unstored, 4, torch.Generator())} == {torch.Tensor}


def test_key_tells_materialized_tables_from_rendered_ones(tmp_path):
    model, data, bank = teacher_model(), split(), bank_of(KINDS["intensity"])
    CachedTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank, cache_dir=tmp_path)
    CachedTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank, cache_dir=tmp_path,
                  bank_images=materialize_views(data.images, bank, data.images))
    assert len(list((tmp_path / "teacher").iterdir())) == 2


def test_pipeline_materializes_within_the_memory_bound_only():
    data = split(key=None)
    bundle = DatasetBundle(["a", "b", "c"], None, data, data, data, SIZE, 3, {}, True)
    bank = bank_of(KINDS["crop"])
    config = load_config(None, ["data.dataset=digits", "distill.bank_views=3"])
    stored = materialized_bank(config, bundle, bank)
    assert torch.equal(stored, materialize_views(data.images, bank, data.images))
    assert materialized_bank(config, bundle, bank) is stored  # built once, shared
    tiny = load_config(None, ["data.dataset=digits", "distill.bank_views=3", "distill.bank_memory_mb=0"])
    assert materialized_bank(tiny, bundle, bank) is None  # over the bound: rendered per batch
