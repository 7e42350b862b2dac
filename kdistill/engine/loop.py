"""One training loop for the teacher, the baseline student and the distilled student.

The loop knows nothing about distillation: it calls ``method(batch, model, teacher)`` and
optimizes ``out["loss"]``. Each epoch ends with a validation pass; the best epoch by the named
validation metric is kept. After every epoch the full training state (weights, optimizer,
schedule, history) is saved atomically under ``resume_dir`` (its format: kdistill/engine/resume.py),
so an interrupted run continues with ``resume=True`` and, because each epoch's shuffling and flips
come from a generator seeded by (seed, epoch), ends where an uninterrupted run ends.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from tqdm import tqdm

from kdistill.config import TrainConfig
from kdistill.engine import distributed
from kdistill.engine.allocator import keep_freed_memory, release_freed_memory
from kdistill.models.checkpoint import save_checkpoint
from kdistill.data import DatasetBundle, iterate_batches
from kdistill.data.datasets import epoch_views
from kdistill.models.fast_path import model_training_input
from kdistill.engine.precision import autocast, check_precision, grad_scaler
from kdistill.engine.resume import (TrainState, load_newest_state, method_state, remove_resume_state,
                                    save_train_state)
from kdistill.errors import KdistillError
from kdistill.eval.inference import predict_logits
from kdistill.log import log
from kdistill.eval.metrics import classification_metrics



@dataclass
class FitResult:
    best_epoch: int
    best_val: dict
    history: list[dict]


def fit(
    model: nn.Module,
    method,
    data: DatasetBundle,
    *,
    name: str,
    checkpoint_dir: Path,
    checkpoint_meta: dict,
    resume_dir: Path,
    train: TrainConfig,
    teacher=None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
    precision: str = "fp32",
) -> FitResult:
    """Train ``model`` with ``method`` on the recipe ``train`` (epochs, batch size, optimizer,
    schedule, selection metric; ``class_weighting`` is the method's); write the best epoch's
    checkpoint to ``checkpoint_dir``."""
    epochs, batch_size, select_metric = train.epochs, train.batch_size, train.select_metric
    # Without it every CPU step gives its freed buffers back to the OS and faults them in again
    # (benchmarks/kd_speed.py times a naive loop without and with this setting: (a) and (a')).
    keep_freed_memory()
    place = torch.device(device)
    check_precision(place, precision)
    model.to(place)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise KdistillError(f"{name}: the model has no trainable parameters")
    world = distributed.current()
    # A method's own parameters (a regressor) train beside the student's, after them in the
    # optimizer, so a method without any builds exactly the optimizer it always did.
    params += method_parameters(method, place, world, name)
    # Under torchrun each process takes its share of the epoch; batch_size is per process.
    steps_per_epoch = math.ceil(distributed.shard_size(len(data.train), world) / batch_size)
    trained = distributed.wrap_student(model, world)  # ``model`` itself when not distributed
    runner = StepRunner(place, precision, teacher)
    opt = build_optimizer(train.optimizer, params, train.lr, train.weight_decay)
    sched = build_schedule(train.schedule, opt, epochs * steps_per_epoch)
    state = TrainState(history=[], best_epoch=0, best_score=None, best_weights=None)
    if resume:
        state = load_newest_state(resume_dir, name, model, opt, sched, runner.scaler, method) or state
    for epoch in range(len(state.history) + 1, epochs + 1):
        started = time.perf_counter()
        if hasattr(method, "set_epoch"):  # warm-ups and schedules inside the method
            method.set_epoch(epoch)
        train_stats = train_one_epoch(trained, method, teacher, data, opt, sched, batch_size,
                                      _epoch_generator(seed, epoch), name, epoch, epochs,
                                      progress and world.is_main, world=world, runner=runner)
        val = _validate(_InputsTo(model, place) if place.type != "cpu" else model, data)
        record = {"epoch": epoch, **train_stats, "val_loss": val["loss"],
                  **{f"val_{k}": v for k, v in val.items() if k not in ("loss", "confusion_matrix")},
                  "seconds": round(time.perf_counter() - started, 3)}
        state.history.append(record)
        score = val[select_metric]
        if state.improved_by(score, select_metric):
            state.best_epoch, state.best_score = epoch, score
            state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log.info(_epoch_line(name, record, epochs))
        if world.is_main:
            state.method_tensors = method_state(method)
            save_train_state(resume_dir, model, opt, sched, runner.scaler, state)
    model.load_state_dict(state.best_weights)
    best_val = {k[4:]: v for k, v in state.history[state.best_epoch - 1].items() if k.startswith("val_")}
    meta = {**checkpoint_meta, "selected": {"epoch": state.best_epoch, "metric": select_metric,
                                            "val": best_val}, "history": state.history}
    if world.is_main:
        save_checkpoint(checkpoint_dir, model, meta)
        remove_resume_state(resume_dir)
    distributed.barrier(world)  # the other ranks load this checkpoint next
    release_freed_memory()  # what training kept for reuse must not add to the next phase's peak
    return FitResult(state.best_epoch, best_val, state.history)


def method_parameters(method, device: torch.device, world: distributed.World, name: str) -> list:
    """The trainable parameters a method owns (an ``nn.Module`` method's), moved to ``device``."""
    if not isinstance(method, nn.Module):
        return []
    method.to(device)
    owned = [p for p in method.parameters() if p.requires_grad]
    if owned and world.active:  # outside the DDP wrapper their gradients would not be averaged
        raise KdistillError(f"{name}: a method with its own parameters trains on one process only; "
                            f"run it without torchrun")
    return owned


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling and flips of one epoch depend only on (seed, epoch): resumable and replayable."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except BatchNorm layers whose parameters are all frozen (``head`` fine-tuning):
    they keep their running statistics and stay in eval mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def train_one_epoch(model: nn.Module, method, teacher, data: DatasetBundle, opt: torch.optim.Optimizer,
                    sched, batch_size: int, generator: torch.Generator, name: str, epoch: int,
                    epochs: int, progress: bool, world: distributed.World = distributed.World(),
                    runner: StepRunner | None = None) -> dict:
    """One pass over the training set, stepping ``opt`` and ``sched`` per batch; returns the
    epoch's training loss, accuracy and last learning rate. :func:`fit` calls it once per epoch."""
    set_train_mode(model)
    if isinstance(method, nn.Module):
        method.train()
    runner = runner or StepRunner(torch.device("cpu"), "fp32", teacher)
    batches = training_batches(model, teacher, data, batch_size, generator, runner, world)
    total = math.ceil(distributed.shard_size(len(data.train), world) / batch_size)
    # In a terminal the bar redraws often; in a log file it is rewritten every 30 s at most.
    interactive = sys.stderr.isatty()
    bar = tqdm(batches, total=total, desc=f"{name} {epoch}/{epochs}", leave=False,
               disable=not progress, mininterval=0.1 if interactive else 30.0)
    seen, loss_sum, correct, labeled = 0, 0.0, 0, 0
    for step, batch in enumerate(bar, start=1):
        batch = runner.to_device(batch)
        with runner.autocast():
            out = method(batch, model, runner.teacher)
        loss = out["loss"].float()
        if not distributed.all_true(bool(torch.isfinite(loss)), world):  # every rank stops together
            raise KdistillError(f"{name}: loss is {loss.item()} at epoch {epoch}, step {step}; "
                                f"lower the learning rate (the last good epoch's state is kept)")
        opt.zero_grad(set_to_none=True)
        runner.scaler.scale(loss).backward()
        runner.scaler.step(opt)  # = opt.step() unless fp16 loss scaling is on
        runner.scaler.update()
        sched.step()
        count = len(batch.labels)
        seen += count
        loss_sum += loss.item() * count
        # Training accuracy over labelled rows only: unlabelled images (label -1) have no answer.
        has_label = batch.labels >= 0
        correct += int(((out["logits"].argmax(1) == batch.labels) & has_label).sum())
        labeled += int(has_label.sum())
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", refresh=False)
    seen, loss_sum, correct, labeled = distributed.sum_across([seen, loss_sum, correct, labeled], world)
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / max(labeled, 1),
            "lr": sched.get_last_lr()[0]}


def training_batches(model, teacher, data: DatasetBundle, batch_size: int, generator: torch.Generator,
                     runner: StepRunner | None = None, world: distributed.World = distributed.World()):
    """One epoch's training batches for ``model``, as the training loop draws them. Views other
    than flips (``data.augment``, ``data.bank``) arrive rendered and normalized, except a
    materialized bank's (``data.bank_images``): those are plain uint8 images, so a model's own fast
    input form applies to them as to plain and mirrored images."""
    mean, std = data.normalization
    views, view_ids = epoch_views(data, generator)
    stored = views is not None and data.bank_images is not None
    to_input = training_input(model, teacher, data, runner, world) if views is None or stored else None
    return iterate_batches(data.train, batch_size, channels=data.channels, mean=mean, std=std,
                           shuffle=True, augment=data.hflip, generator=generator,
                           # channels_last: the reference student's CPU training step runs faster on it.
                           channels_last=True, to_input=to_input, views=views, view_ids=view_ids,
                           bank_images=data.bank_images if stored else None,
                           shard=functools.partial(distributed.shard, world=world) if world.active else None)


def training_input(model, teacher, data: DatasetBundle, runner: StepRunner | None = None,
                   world: distributed.World = distributed.World()):
    """The model's own uint8 -> training input converter (kdistill/models/fast_path.py), or None
    for ordinary normalized batches. Asked only when nothing but the model reads the images: no
    teacher that reads them (``teacher.reads_images``) and one process (the distributed wrapper
    passes tensors only)."""
    if world.active or (teacher is not None and getattr(teacher, "reads_images", True)):
        return None
    device, precision = (runner.device, runner.precision) if runner else (torch.device("cpu"), "fp32")
    mean, std = data.normalization
    return model_training_input(model, data.train.images, channels=data.channels, mean=mean, std=std,
                                device=device, precision=precision)


class StepRunner:
    """What a training step needs to run on ``device`` in ``precision``: batches and teacher
    outputs moved there, the autocast region (the live teacher runs inside it too) and the fp16
    gradient scaler. On the CPU in fp32 every piece is a no-op. :func:`training_input` and
    :func:`training_batches` read its device and precision to pick the model's input form."""

    def __init__(self, device: torch.device, precision: str, teacher):
        self.device, self.precision = device, precision
        self.scaler = grad_scaler(device, precision)
        self.teacher = teacher if device.type == "cpu" or teacher is None else _teacher_on(teacher, device)

    def autocast(self):
        return autocast(self.device, self.precision)

    def to_device(self, batch):
        if self.device.type == "cpu":
            return batch
        # index/flipped stay on the CPU: they look up cached teacher outputs held there.
        return dataclasses.replace(batch, images=batch.images.to(self.device, non_blocking=True),
                                   labels=batch.labels.to(self.device, non_blocking=True))


def _teacher_on(teacher, device: torch.device):
    """The teacher's outputs on ``device``: what its ``on(device)`` gives (kdistill/distill/teacher.py),
    else its CPU outputs moved there batch by batch."""
    if hasattr(teacher, "on"):
        return teacher.on(device)
    return lambda batch: teacher(batch).to(device)


class _InputsTo(nn.Module):
    """Runs ``model`` on ``device`` for code that feeds CPU batches (validation); returns CPU float32."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        self.model, self.device = model, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device)).float().cpu()


def _validate(model: nn.Module, data: DatasetBundle) -> dict:
    mean, std = data.normalization
    logits = predict_logits(model, data.val, channels=data.channels, mean=mean, std=std)
    labels = data.val.labels
    loss = float(F.cross_entropy(logits, labels))
    probs = torch.softmax(logits, 1).numpy()
    threshold = 0.5 if data.positive_index is not None else None
    metrics = classification_metrics(probs, labels.numpy(), data.positive_index, threshold)
    return {"loss": loss, **metrics}


def _epoch_line(name: str, record: dict, epochs: int) -> str:
    auc = record.get("val_auc")
    auc_text = f" auc {auc:.4f}" if auc is not None else ""
    return (f"{name} epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f} | val loss {record['val_loss']:.4f} "
            f"acc {record['val_accuracy']:.4f} bal_acc {record['val_balanced_accuracy']:.4f}{auc_text}"
            f" | {record['seconds']:.1f}s")


def build_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer named in the config: ``sgd`` (Nesterov momentum 0.9), else AdamW."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def build_schedule(name: str, opt: torch.optim.Optimizer,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule: ``cosine`` to zero over ``total_steps``, else constant."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """'balanced' cross-entropy weights, N / (K * count_k), from the training labels."""
    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels.numpy())
    return torch.tensor(weights, dtype=torch.float32)
