"""Resume: a run interrupted after epoch k and resumed ends exactly where an uninterrupted run ends.

Tolerance: exact equality (torch.equal). On CPU, with the same thread count, every op here is
deterministic, each epoch's shuffling and flips come from a generator seeded by (seed, epoch), and
the optimizer/scheduler state is restored bit for bit, so there is no reason for any difference.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch

import kdistill.engine.loop as train_module
import kdistill.engine.resume as resume_module
from conftest import leftover_temp_files, tiny_config, write_config
from kdistill.models.checkpoint import architecture, load_checkpoint
from kdistill.cli import main
from kdistill.data import load_dataset
from kdistill.distill import CachedTeacher, build_method
from kdistill.models import build_model
from kdistill.engine.loop import fit
from kdistill.config import DataConfig, TrainConfig

EPOCHS = 4
INTERRUPT_AT = 3  # the run dies at the start of epoch 3, so the saved state is that of epoch 2


class Interrupted(KeyboardInterrupt):
    """Stands for Ctrl-C or a killed job."""


def interrupt_at(monkeypatch, epoch_to_fail: int, role: str | None = None):
    """Make ``train_one_epoch`` raise at the start of ``epoch_to_fail`` (of ``role`` if given)."""
    real = train_module.train_one_epoch
    signature = inspect.signature(real)

    def flaky(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        if bound["epoch"] == epoch_to_fail and role in (None, bound["name"]):
            raise Interrupted()
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", flaky)


def record_epoch_ends(monkeypatch) -> list[dict]:
    """Spy on the per-epoch state save: a copy of the weights at the end of every epoch run."""
    real = train_module.save_train_state
    ends = []

    def spy(resume_dir, model, opt, sched, scaler, state):
        ends.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(resume_dir, model, opt, sched, scaler, state)

    monkeypatch.setattr(train_module, "save_train_state", spy)
    return ends


@pytest.fixture
def data(image_root):
    return load_dataset(DataConfig(root=str(image_root), input_size=16, val_fraction=0.25, test_fraction=0.25))


def distill_fit(data, out, resume=False):
    """Distil a fresh tiny CNN (same init every call) from a fixed teacher for EPOCHS epochs."""
    torch.manual_seed(0)
    teacher = build_model("tiny_cnn_d2", 2, input_size=16, width=4)
    mean, std = data.normalization
    cached = CachedTeacher(teacher, data.train, channels=3, mean=mean, std=std)
    torch.manual_seed(1)
    student = build_model("tiny_cnn_d2", 2, input_size=16, width=4)
    meta = {"architecture": architecture("tiny_cnn_d2", 2, 16, 3, {"width": 4})}
    result = fit(student, build_method("kd", alpha=0.5, temperature=4.0), data, name="distilled",
                 checkpoint_dir=out / "distilled", checkpoint_meta=meta, resume_dir=out / "resume",
                 teacher=cached, train=TrainConfig(epochs=EPOCHS, batch_size=8, lr=0.01), seed=3,
                 resume=resume, progress=False)
    return student, result


def without_timing(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def test_interrupted_fit_leaves_resume_state_and_no_checkpoint(data, tmp_path, monkeypatch):
    """After the interruption only the resume state of the finished epochs exists."""
    interrupt_at(monkeypatch, INTERRUPT_AT)
    with pytest.raises(Interrupted):
        distill_fit(data, tmp_path)
    state = json.loads((tmp_path / "resume" / "state.json").read_text())
    assert [r["epoch"] for r in state["history"]] == [1, 2]
    assert not (tmp_path / "distilled").exists()
    assert leftover_temp_files(tmp_path) == []


def test_resumed_fit_ends_with_the_same_weights(data, tmp_path, monkeypatch):
    """Interrupted at epoch 3 then resumed == uninterrupted: last-epoch weights, selected
    checkpoint and per-epoch history all exactly equal; only epochs 3-4 ran after resuming."""
    ends = record_epoch_ends(monkeypatch)
    straight_model, straight = distill_fit(data, tmp_path / "straight")
    straight_last = ends[-1]

    ends.clear()
    with monkeypatch.context() as patch:
        interrupt_at(patch, INTERRUPT_AT)
        with pytest.raises(Interrupted):
            distill_fit(data, tmp_path / "resumed")
    assert len(ends) == INTERRUPT_AT - 1
    ends.clear()
    resumed_model, resumed = distill_fit(data, tmp_path / "resumed", resume=True)

    assert len(ends) == EPOCHS - INTERRUPT_AT + 1
    for key, value in straight_last.items():
        assert torch.equal(ends[-1][key], value), key
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert resumed.best_epoch == straight.best_epoch
    for key, value in straight_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
    assert not (tmp_path / "resumed" / "resume").exists()  # removed once the model is done


def test_resume_state_keeps_the_fp16_loss_scale(tmp_path):
    """The gradient scaler's scale and growth counter survive a save and a load (fp16 on a GPU
    uses it; the CPU scaler has the same state, so this runs anywhere). A state saved without
    scaling leaves a fresh scaler at its initial scale."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    state = resume_module.TrainState([], 0, None, model.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 512.0, "_growth_tracker": 37})
    resume_module.save_train_state(tmp_path / "scaled", model, opt, sched, scaler, state)
    resume_module.save_train_state(tmp_path / "plain", model, opt, sched,
                                  torch.amp.GradScaler("cpu", enabled=False), state)

    restored = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    resume_module.load_train_state(tmp_path / "scaled", model, opt, sched, restored)
    assert restored.state_dict()["scale"] == 512.0
    assert restored.state_dict()["_growth_tracker"] == 37
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    resume_module.load_train_state(tmp_path / "plain", model, opt, sched, fresh)
    assert fresh.state_dict()["scale"] == 2.0**16


@pytest.mark.slow
def test_pipeline_resume_through_the_cli(image_root, tmp_path, monkeypatch):
    """`kdistill run` killed while distilling, rerun with --resume: the teacher and baseline are
    reused (not retrained) and the distilled student equals that of an uninterrupted run."""
    straight_out, resumed_out = tmp_path / "straight", tmp_path / "resumed"
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, straight_out))
    assert main(["run", str(config)]) == 0

    with monkeypatch.context() as patch:
        interrupt_at(patch, 2, role="distilled")
        assert main(["run", str(config), "--out", str(resumed_out)]) == 130
    assert not (resumed_out / "results.json").exists()
    teacher_file = resumed_out / "teacher" / "model.safetensors"
    teacher_mtime = teacher_file.stat().st_mtime_ns

    trained = []
    real_fit = train_module.fit
    monkeypatch.setattr("kdistill.pipeline.fit", lambda *a, **k: trained.append(k["name"]) or real_fit(*a, **k))
    assert main(["run", str(config), "--out", str(resumed_out), "--resume"]) == 0
    assert trained == ["distilled"]
    assert teacher_file.stat().st_mtime_ns == teacher_mtime
    results = json.loads((resumed_out / "results.json").read_text())
    assert [m["role"] for m in results["models"]] == ["teacher", "baseline", "distilled"]
    a, _ = load_checkpoint(straight_out / "distilled")
    b, _ = load_checkpoint(resumed_out / "distilled")
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


@pytest.mark.parametrize("hflip", [True, False])
def test_hflip_setting_controls_the_training_views(image_root, tmp_path, hflip):
    """data.hflip=false trains on unflipped images only; true mirrors about half of them."""
    data = load_dataset(DataConfig(root=str(image_root), input_size=16, val_fraction=0.25, test_fraction=0.25,
                                   hflip=hflip))
    seen = []

    def recording_method(batch, student, teacher):
        seen.append(batch.flipped)
        return build_method("ce")(batch, student, teacher)

    model = build_model("reference_student", 2, input_size=16)
    meta = {"architecture": architecture("reference_student", 2, 16, 3, {})}
    fit(model, recording_method, data, name="student", checkpoint_dir=tmp_path / "ckpt", checkpoint_meta=meta,
        resume_dir=tmp_path / "resume", train=TrainConfig(epochs=2, batch_size=8), progress=False)
    flipped = torch.cat(seen)
    assert len(flipped) == 2 * len(data.train)
    if hflip:
        assert 0 < int(flipped.sum()) < len(flipped)
    else:
        assert not bool(flipped.any())
