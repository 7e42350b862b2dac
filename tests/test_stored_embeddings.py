"""rkd (and any method whose teacher side is the pooled embedding) on the teacher's embedding
stored per (image, view): the same loss as with the live teacher, on the same views."""

import dataclasses

import pytest
import torch
from torch import nn

from kdistill.config import from_dict
from kdistill.data import DatasetBundle
from kdistill.distill import FeatureTeacher, build_method
from kdistill.distill.inputs import teacher_output_kind
from kdistill.distill.teacher import FLIP_VIEWS, StoredEmbeddingTeacher
from kdistill.engine.loop import training_batches
from kdistill.models import build_model
from test_bank import COUNT, KINDS, MEAN, SIZE, STD, bank_of, split, teacher_model


def student_model():
    torch.manual_seed(1)
    return build_model("kd_plain", 3, input_size=SIZE, width=4, depth=2)


@pytest.mark.parametrize("views", ["flips", "bank"])
def test_rkd_on_stored_embeddings_equals_rkd_with_the_live_teacher(views, tmp_path):
    data = split()
    bank = FLIP_VIEWS if views == "flips" else bank_of(dataclasses.replace(KINDS["crop"], hflip=True, rotation=7),
                                                         views_per_image=4)
    bundle = DatasetBundle(["a", "b", "c"], None, data, data, data, SIZE, 3, {}, True, augment=None,
                           bank=None if views == "flips" else bank)
    stored = StoredEmbeddingTeacher(teacher_model(), data, channels=3, mean=MEAN, std=STD, views=bank,
                                    cache_dir=tmp_path, batch_size=3)
    assert stored.table.shape == (COUNT, bank.shape[0] if views == "flips" else 4, 32)
    live = FeatureTeacher(teacher_model())
    student = student_model()
    on_stored, on_live = build_method("rkd"), build_method("rkd")
    example = torch.zeros(1, 3, SIZE, SIZE)
    on_stored.bind(student, stored, example)
    on_live.bind(student, live, example)
    assert on_stored.teacher_paths == on_live.teacher_paths
    compared = 0
    for batch in training_batches(student, stored, bundle, 4, torch.Generator().manual_seed(5)):
        with torch.no_grad():
            a = on_stored(batch, student, stored)["loss"]
            b = on_live(batch, student, live)["loss"]
        assert abs(a.item() - b.item()) <= 1e-4, (a.item(), b.item())
        compared += 1
    assert compared >= 2


def test_the_stored_table_is_reused_and_keyed_by_the_teacher(tmp_path):
    data, bank = split(), bank_of(KINDS["crop"])
    first = StoredEmbeddingTeacher(teacher_model(), data, channels=3, mean=MEAN, std=STD, views=bank, cache_dir=tmp_path)
    again = StoredEmbeddingTeacher(teacher_model(), data, channels=3, mean=MEAN, std=STD, views=bank, cache_dir=tmp_path)
    assert torch.equal(first.table, again.table)
    assert len(list((tmp_path / "teacher").glob("embedding-*"))) == 1
    other = teacher_model()
    with torch.no_grad():
        other[0].weight.add_(0.1)
    StoredEmbeddingTeacher(other, data, channels=3, mean=MEAN, std=STD, views=bank, cache_dir=tmp_path)
    assert len(list((tmp_path / "teacher").glob("embedding-*"))) == 2
    half = StoredEmbeddingTeacher(teacher_model(), data, channels=3, mean=MEAN, std=STD, views=bank,
                                  cache_dir=tmp_path, dtype="float16")
    assert half.table.dtype == torch.float16
    assert torch.allclose(half.table.float(), first.table, atol=1e-2, rtol=1e-2)


def test_stored_embeddings_serve_only_the_default_layer_with_a_teacher_cache():
    def config(**distill):
        return from_dict({"data": {"dataset": "digits"}, "distill": {"method": "rkd", **distill}})

    assert teacher_output_kind("rkd", config()) == "embedding"
    assert teacher_output_kind("rkd", config(teacher_cache=False)) == "features"
    assert teacher_output_kind("rkd", config(params={"rkd": {"teacher_embedding": "3"}})) == "features"
    assert teacher_output_kind("fitnet", config()) == "features"
    assert teacher_output_kind("kd", config()) == "logits"


def test_a_stored_teacher_refuses_other_layers():
    stored = StoredEmbeddingTeacher(teacher_model(), split(key=None), channels=3, mean=MEAN, std=STD)
    batch = next(iter(training_batches(nn.Identity(), stored, DatasetBundle(
        ["a", "b", "c"], None, split(None), split(None), split(None), SIZE, 3, {}, True, augment=None), 4,
        torch.Generator().manual_seed(0))))
    with pytest.raises(Exception, match="stored teacher embeddings hold"):
        stored.features(batch, ["0"])


def test_embeddings_from_onnx_runtime_equal_pytorch_hooks():
    """A teacher whose passes run in ONNX Runtime gets its embeddings there too (the model with an
    identity head), within float tolerance of the hooked PyTorch forward."""
    from kdistill.deploy.runner import onnx_runner
    from kdistill.models.inference import use_runner

    data, bank = split(key=None), bank_of(KINDS["crop"])
    plain = StoredEmbeddingTeacher(teacher_model(), data, channels=3, mean=MEAN, std=STD, views=bank)
    model = teacher_model()
    use_runner(model, onnx_runner(model, channels=3, input_size=SIZE, threads=1, what="teacher"))
    from_runtime = StoredEmbeddingTeacher(model, data, channels=3, mean=MEAN, std=STD, views=bank)
    assert plain.runtime == "pytorch" and from_runtime.runtime == "onnxruntime"
    assert (from_runtime.table - plain.table).abs().max() <= 1e-4
