"""The teacher stays frozen during distillation, head-only fine-tuning trains only the head, and
the cached teacher replays the live teacher's outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdistill.models.checkpoint import architecture
from kdistill.data import ImageSplit, iterate_batches, load_dataset
from kdistill.data.transforms import normalization
from kdistill.distill import CachedTeacher, LiveTeacher, build_method
from kdistill.distill.losses import kd_loss
from kdistill.models import build_model, find_head
from kdistill.pipeline import freeze_all_but_head
from kdistill.engine.loop import fit, set_train_mode
from kdistill.config import DataConfig, TrainConfig

MEAN, STD = normalization(3)


def random_split(count: int = 12, size: int = 16, channels: int = 1, seed: int = 0) -> ImageSplit:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(count) % 2
    names = [f"img{i}.png" for i in range(count)]
    return ImageSplit(images, labels, names, names)


def warmed_up_teacher() -> nn.Module:
    """A tiny CNN whose BatchNorm statistics are not the defaults, so eval vs train mode matters."""
    torch.manual_seed(0)
    teacher = build_model("tiny_cnn_d2", 2, input_size=16, width=4)
    teacher.train()
    with torch.no_grad():
        for _ in range(3):
            teacher(torch.randn(8, 3, 16, 16) * 2 + 1)
    return teacher


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict, model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def test_kd_step_leaves_teacher_parameters_and_batchnorm_buffers_unchanged():
    """Optimizer steps on the student must not move any teacher weight or BN statistic."""
    teacher_model = warmed_up_teacher()  # left in train mode on purpose
    before = snapshot(teacher_model)
    assert any(k.endswith("num_batches_tracked") for k in before)
    teacher = LiveTeacher(teacher_model)
    torch.manual_seed(1)
    student = build_model("reference_student", 2, input_size=16)
    student_before = snapshot(student)
    method = build_method("kd", alpha=0.5, temperature=4.0)
    opt = torch.optim.AdamW(student.parameters(), lr=0.01)
    batches = iterate_batches(random_split(), 4, channels=3, mean=MEAN, std=STD, shuffle=True,
                              augment=True, generator=torch.Generator().manual_seed(0))
    student.train()
    for step, batch in enumerate(batches):
        if step == 1:
            teacher_model.train()  # a caller flipping the mode back must not matter
        out = method(batch, student, teacher)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert changed(before, teacher_model) == set()
    assert not any(m.training for m in teacher_model.modules())
    assert all(not p.requires_grad and p.grad is None for p in teacher_model.parameters())
    assert changed(student_before, student)  # the student did train


def test_kd_method_returns_the_contract_objective():
    """out["loss"] == (1 - alpha) * CE + alpha * kd_loss(s, t, T), with the named terms beside it."""
    teacher = LiveTeacher(warmed_up_teacher())
    torch.manual_seed(1)
    student = build_model("reference_student", 2, input_size=16).eval()
    batch = next(iterate_batches(random_split(), 6, channels=3, mean=MEAN, std=STD))
    out = build_method("kd", alpha=0.3, temperature=2.0)(batch, student, teacher)
    s, t = student(batch.images), teacher(batch)
    expected = 0.7 * nn.functional.cross_entropy(s, batch.labels) + 0.3 * kd_loss(s, t, 2.0)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert {"ce", "kd"} <= set(out)


def test_head_mode_trains_only_the_head(image_root, tmp_path):
    """teacher.mode=head: after a few fit epochs the backbone's weights and BN buffers are exactly
    as loaded and only the classifier head moved."""
    data = load_dataset(DataConfig(root=str(image_root), input_size=16, val_fraction=0.25, test_fraction=0.25))
    model = warmed_up_teacher()
    freeze_all_but_head(model)
    head_name, _ = find_head(model)
    before = snapshot(model)
    set_train_mode(model)
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert find_head(model)[1].training
    arch = architecture("tiny_cnn_d2", 2, 16, 3, {"width": 4})
    fit(model, build_method("ce"), data, name="teacher", checkpoint_dir=tmp_path / "ckpt",
        checkpoint_meta={"architecture": arch}, resume_dir=tmp_path / "resume",
        train=TrainConfig(epochs=2, batch_size=8, lr=0.05), progress=False)
    moved = changed(before, model)
    assert moved == {f"{head_name}.weight", f"{head_name}.bias"}


def test_cached_teacher_replays_live_logits_for_each_view():
    """For the very (image, flip) view in each augmented batch, cache == live teacher within 1e-4."""
    model = warmed_up_teacher()
    split = random_split(count=10)
    cached = CachedTeacher(model, split, channels=3, mean=MEAN, std=STD, batch_size=3)
    live = LiveTeacher(model)
    assert not torch.allclose(cached.table[:, 0], cached.table[:, 1])  # flips change the output
    seen_flips = set()
    for epoch in range(2):
        batches = iterate_batches(split, 4, channels=3, mean=MEAN, std=STD, shuffle=True,
                                  augment=True, generator=torch.Generator().manual_seed(epoch))
        for batch in batches:
            seen_flips.update(batch.flipped.tolist())
            torch.testing.assert_close(cached(batch), live(batch), atol=1e-4, rtol=0)
    assert seen_flips == {True, False}
