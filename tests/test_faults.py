"""Faults: a training process killed with SIGKILL mid-epoch, a torn resume state, a NaN loss.

Tolerance: exact equality (torch.equal). With ``deterministic: true``, one thread, each epoch's
shuffling drawn from a generator seeded by (seed, epoch) and the optimizer/scheduler state restored
bit for bit, a resumed run has no reason to differ from an uninterrupted one in any bit.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import kdistill.engine.loop as train_module
from kdistill.engine.resume import verify_train_state
from conftest import PROJECT_ROOT, leftover_temp_files
from kdistill.models.checkpoint import architecture
from kdistill.data import load_dataset
from kdistill.distill import build_method
from kdistill.errors import KdistillError
from kdistill.models import build_model
from kdistill.engine.loop import fit
from kdistill.config import DataConfig, TrainConfig

DIGITS_CONFIG = {
    # 1,320 training images in batches of 2: an epoch lasts about a second, long enough to be
    # killed in the middle of one.
    "data": {"dataset": "digits", "input_size": 16},
    "student": {"model": "reference_student", "train": {"epochs": 3, "batch_size": 2, "lr": 0.01}},
    "deterministic": True, "threads": 1, "progress": False, "export": False,
}


def train_baseline(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "kdistill", "train", str(config), "--role", "baseline",
                             "--out", str(out), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def saved_epochs(resume_dir: Path) -> int:
    """Epochs recorded in the newest resume state (0 while there is none or it is being renamed)."""
    try:
        return len(json.loads((resume_dir / "state.json").read_text())["history"])
    except (OSError, ValueError):
        return 0


def kill_during_epoch(process: subprocess.Popen, resume_dir: Path, epoch: int, timeout: float = 60) -> None:
    """SIGKILL ``process`` a moment after the state of ``epoch - 1`` appears: inside ``epoch``."""
    deadline = time.monotonic() + timeout
    while saved_epochs(resume_dir) < epoch - 1:
        assert process.poll() is None, f"training ended before epoch {epoch}: {process.stdout.read()}"
        assert time.monotonic() < deadline, "no resume state appeared"
        time.sleep(0.02)
    time.sleep(0.3)  # an epoch takes about a second here
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path):
    """`kdistill train` killed with SIGKILL inside epoch 2, rerun with --resume, ends with weights
    bit-identical to a run never killed; the killed run left no checkpoint and no temp files."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(DIGITS_CONFIG))
    straight = train_baseline(config, tmp_path / "straight")
    assert straight.wait(timeout=120) == 0, straight.stdout.read()

    killed_out = tmp_path / "killed"
    process = train_baseline(config, killed_out)
    kill_during_epoch(process, killed_out / "resume" / "baseline", epoch=2)
    assert process.returncode == -signal.SIGKILL
    assert not (killed_out / "baseline").exists()
    assert saved_epochs(killed_out / "resume" / "baseline") == 1  # epoch 2 had not finished
    assert leftover_temp_files(killed_out) == []

    resumed = train_baseline(config, killed_out, "--resume")
    output = resumed.communicate(timeout=120)[0]
    assert resumed.returncode == 0, output
    assert "resuming after epoch 1" in output
    expected = load_file(str(tmp_path / "straight" / "baseline" / "model.safetensors"))
    got = load_file(str(killed_out / "baseline" / "model.safetensors"))
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    resume = killed_out / "resume"
    assert not resume.exists() or not any(resume.iterdir())  # both kept states removed when done


# In-process runs for the torn-state and NaN cases (faster than subprocesses).

EPOCHS = 4


class Interrupted(KeyboardInterrupt):
    """Stands for a killed job."""


def interrupt_at(monkeypatch, epoch_to_fail: int) -> list[int]:
    """Make ``train_one_epoch`` raise at ``epoch_to_fail``; return the list of epochs trained."""
    real = train_module.train_one_epoch
    signature = inspect.signature(real)
    trained: list[int] = []

    def flaky(*args, **kwargs):
        epoch = signature.bind(*args, **kwargs).arguments["epoch"]
        if epoch == epoch_to_fail:
            raise Interrupted()
        trained.append(epoch)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", flaky)
    return trained


@pytest.fixture
def data(image_root):
    return load_dataset(DataConfig(root=str(image_root), input_size=16, val_fraction=0.25, test_fraction=0.25))


def tiny_fit(data, out: Path, method=None, resume: bool = False):
    torch.manual_seed(1)
    model = build_model("tiny_cnn_d2", 2, input_size=16, width=4)
    meta = {"architecture": architecture("tiny_cnn_d2", 2, 16, 3, {"width": 4})}
    fit(model, method or build_method("ce"), data, name="student", checkpoint_dir=out / "student",
        checkpoint_meta=meta, resume_dir=out / "resume" / "student",
        train=TrainConfig(epochs=EPOCHS, batch_size=8, lr=0.01), seed=3, resume=resume, progress=False)
    return model


def test_torn_newest_state_falls_back_to_the_previous_one(data, tmp_path, monkeypatch, caplog):
    """The newest resume state (epoch 3) truncated: resume says so, continues from epoch 2's
    state (kept beside it), retrains epochs 3-4 and still ends with the uninterrupted weights."""
    straight = tiny_fit(data, tmp_path / "straight")
    out = tmp_path / "torn"
    with monkeypatch.context() as patch:
        interrupt_at(patch, 4)
        with pytest.raises(Interrupted):
            tiny_fit(data, out)
    newest = out / "resume" / "student"
    assert saved_epochs(newest) == 3 and saved_epochs(out / "resume" / "student.previous") == 2
    weights = newest / "last.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    trained = interrupt_at(monkeypatch, 99)  # never fires; records the epochs that run
    caplog.set_level("INFO", logger="kdistill")
    resumed = tiny_fit(data, out, resume=True)
    assert "falling back to the previous epoch's state" in caplog.text
    assert str(weights) in caplog.text
    assert trained == [3, 4]
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert not (out / "resume").exists() or not any((out / "resume").iterdir())


def test_both_states_torn_is_a_clear_error(data, tmp_path, monkeypatch):
    """With no complete state left, resuming stops with the file that is torn named."""
    with monkeypatch.context() as patch:
        interrupt_at(patch, 3)
        with pytest.raises(Interrupted):
            tiny_fit(data, tmp_path)
    for folder in ("student", "student.previous"):
        (tmp_path / "resume" / folder / "optimizer.safetensors").write_bytes(b"")
    with pytest.raises(KdistillError, match=r"student\.previous/optimizer\.safetensors: torn"):
        tiny_fit(data, tmp_path, resume=True)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_state(
        data, tmp_path, bad):
    """A loss that turns NaN/inf at epoch 2, step 2: the error names both; the state saved after
    epoch 1 stays complete and resumable; no checkpoint is written."""
    ce = build_method("ce")
    calls = {"n": 0}
    steps_per_epoch = math.ceil(len(data.train) / 8)

    def exploding(batch, model, teacher):
        calls["n"] += 1
        out = ce(batch, model, teacher)
        if calls["n"] == steps_per_epoch + 2:
            out["loss"] = out["loss"] * bad
        return out

    with pytest.raises(KdistillError, match=r"loss is (nan|inf) at epoch 2, step 2"):
        tiny_fit(data, tmp_path, method=exploding)
    state = tmp_path / "resume" / "student"
    assert saved_epochs(state) == 1
    verify_train_state(state)  # complete: sizes and checksums match
    assert all(torch.isfinite(v).all() for v in load_file(str(state / "last.safetensors")).values())
    assert not (tmp_path / "student").exists()
    assert leftover_temp_files(tmp_path) == []
