"""Best-epoch selection reads the validation split only, and keeps the arg-max of its metric.

``fit`` gets a test split that raises on any use, and a method that learns for two epochs and then
un-learns (gradient ascent), so the best validation epoch is not the last one."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdistill.data import load_dataset
from kdistill.distill import build_method
from kdistill.engine.loop import fit
from kdistill.eval.inference import predict_logits
from kdistill.models import build_model
from kdistill.models.checkpoint import architecture, load_checkpoint
from kdistill.config import DataConfig, TrainConfig

EPOCHS = 5
LEARNING_EPOCHS = 2
BATCH_SIZE = 8


class SplitTouched(AssertionError):
    """Raised by any use of the test split during training."""


class UntouchableSplit:
    """Stands in for the test split: reading any attribute, its length, an item or its truth
    value raises, so selection that peeks at the test split fails loudly."""

    def __getattribute__(self, name):
        raise SplitTouched(f"training read test.{name}")

    def __len__(self):
        raise SplitTouched("training took len(test)")

    def __getitem__(self, index):
        raise SplitTouched("training indexed the test split")

    def __iter__(self):
        raise SplitTouched("training iterated the test split")

    def __bool__(self):
        raise SplitTouched("training tested the test split's truth value")


def learn_then_unlearn(steps_to_learn: int):
    """Cross-entropy for ``steps_to_learn`` steps, then its negative: validation gets worse."""
    ce = build_method("ce")
    steps = {"done": 0}

    def method(batch, model, teacher):
        out = ce(batch, model, teacher)
        steps["done"] += 1
        if steps["done"] > steps_to_learn:
            out = {**out, "loss": -out["loss"]}
        return out

    return method


@pytest.mark.parametrize("metric", ["balanced_accuracy", "loss"])
def test_kept_epoch_is_the_validation_arg_max_and_test_is_never_read(image_root, tmp_path, metric):
    data = load_dataset(DataConfig(root=str(image_root), input_size=16, val_fraction=0.25, test_fraction=0.25))
    data = dataclasses.replace(data, test=UntouchableSplit())
    steps_per_epoch = -(-len(data.train) // BATCH_SIZE)
    torch.manual_seed(0)
    model = build_model("reference_student", 2, input_size=16)
    mean, std = data.normalization
    meta = {"architecture": architecture("reference_student", 2, 16, 3, {}), "classes": data.classes,
            "input_size": 16, "channels": data.channels, "mean": list(mean), "std": list(std)}
    result = fit(model, learn_then_unlearn(LEARNING_EPOCHS * steps_per_epoch), data, name="student",
                 checkpoint_dir=tmp_path / "ckpt", checkpoint_meta=meta, resume_dir=tmp_path / "resume",
                 train=TrainConfig(epochs=EPOCHS, batch_size=BATCH_SIZE, lr=0.01, select_metric=metric),
                 progress=False)

    values = np.array([record[f"val_{metric}"] for record in result.history])
    # The first best epoch (ties keep the earlier one), counted from 1.
    best = int(np.argmin(values) if metric == "loss" else np.argmax(values)) + 1
    assert len(result.history) == EPOCHS
    assert best < EPOCHS, f"un-learning did not make the last epoch worse: {values}"  # the test can tell
    assert result.best_epoch == best
    saved = json.loads((tmp_path / "ckpt" / "model.json").read_text())
    assert saved["selected"]["epoch"] == best and saved["selected"]["metric"] == metric

    # The checkpoint holds that epoch's weights: its validation loss is the one recorded then.
    kept, _ = load_checkpoint(tmp_path / "ckpt")
    logits = predict_logits(kept, data.val, channels=data.channels, mean=mean, std=std)
    val_loss = float(F.cross_entropy(logits, data.val.labels))
    assert val_loss == pytest.approx(result.history[best - 1]["val_loss"], rel=1e-5)
