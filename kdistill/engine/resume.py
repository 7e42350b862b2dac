"""The training state a run resumes from: its files (weights, best weights, optimizer as
safetensors; history, scheduler and loss scale as JSON; no pickle), how they are written (the two
newest kept, ``state.json`` last with each file's size and SHA-256) and read back (a torn state
is recognised and the previous epoch's used instead)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kdistill.errors import CheckpointError
from kdistill.fileio import atomic_directory, sha256_file
from kdistill.log import log
from kdistill.models.checkpoint import state_to_tensors, tensors_to_state

LOWER_IS_BETTER = {"loss"}  # selection metrics where smaller wins


@dataclass
class TrainState:
    """What the resume state holds besides the optimizer and schedule: the per-epoch history,
    the best epoch so far and its weights, and a method's own tensors."""

    history: list[dict]
    best_epoch: int
    best_score: float | None
    best_weights: dict | None
    # A method's own parameters (a regressor): in the resume state only, never in the checkpoint.
    method_tensors: dict = dataclasses.field(default_factory=dict)

    def improved_by(self, score: float | None, metric: str) -> bool:
        if score is None or (isinstance(score, float) and math.isnan(score)):
            return self.best_weights is None
        if self.best_score is None:
            return True
        return score < self.best_score if metric in LOWER_IS_BETTER else score > self.best_score


def method_state(method) -> dict[str, torch.Tensor]:
    """What a method keeps in the resume state (its parameters and buffers); never in the checkpoint."""
    return dict(method.state_dict()) if isinstance(method, nn.Module) else {}


def previous_state_dir(resume_dir: Path) -> Path:
    """The state of the epoch before the newest one: the fallback when the newest is torn."""
    return resume_dir.with_name(resume_dir.name + ".previous")


def remove_resume_state(resume_dir: Path) -> None:
    shutil.rmtree(resume_dir, ignore_errors=True)
    shutil.rmtree(previous_state_dir(resume_dir), ignore_errors=True)


def save_train_state(resume_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, sched, scaler,
                     state: TrainState) -> None:
    """Weights, optimizer and best weights as safetensors; the rest (scheduler, the fp16 gradient
    scaler's loss scale and growth counter) as JSON. No pickle.

    The two newest states are kept: the newest moves to ``<role>.previous`` before the next one is
    written. ``state.json`` is written last and records each file's size and SHA-256, so a state
    torn by a crash or a full disk is recognised on resume and the previous one is used instead.
    """
    opt_tensors, opt_skeleton = state_to_tensors("optimizer", opt.state_dict())
    if (resume_dir / "state.json").is_file():
        previous = previous_state_dir(resume_dir)
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(resume_dir, previous)
    with atomic_directory(resume_dir) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "last.safetensors"))
        save_file({k: v.cpu() for k, v in state.best_weights.items()}, str(tmp / "best.safetensors"))
        save_file(opt_tensors or {"__empty__": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
        files = list(STATE_FILES)
        if state.method_tensors:  # the method's own parameters (a regressor): resumed, never exported
            save_file({k: v.detach().cpu().contiguous() for k, v in state.method_tensors.items()},
                      str(tmp / METHOD_FILE))
            files.append(METHOD_FILE)
        sched_state = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
        (tmp / "state.json").write_text(json.dumps({
            "history": state.history, "best_epoch": state.best_epoch, "best_score": state.best_score,
            "optimizer": opt_skeleton, "scheduler": sched_state, "grad_scaler": scaler.state_dict(),
            "files": {name: _file_digest(tmp / name) for name in files}}, indent=1))


STATE_FILES = ("last.safetensors", "best.safetensors", "optimizer.safetensors")
METHOD_FILE = "method.safetensors"


def _file_digest(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def verify_train_state(resume_dir: Path) -> dict:
    """The parsed ``state.json`` of a complete resume state; a :class:`CheckpointError` says what is torn."""
    try:
        saved = json.loads((resume_dir / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{resume_dir / 'state.json'}: unreadable ({exc})") from None
    for name, expected in saved.get("files", {}).items():  # states from before 'files': unchecked
        path = resume_dir / name
        if not path.is_file() or _file_digest(path) != expected:
            raise CheckpointError(f"{path}: torn or changed (size or checksum differs from state.json)")
    return saved


def load_newest_state(resume_dir: Path, name: str, model, opt, sched, scaler,
                       method=None) -> TrainState | None:
    """Resume from the newest complete state; fall back to the previous epoch's if it is torn."""
    candidates = [d for d in (resume_dir, previous_state_dir(resume_dir)) if (d / "state.json").exists()]
    for index, directory in enumerate(candidates):
        try:
            state = load_train_state(directory, model, opt, sched, scaler, method)
        except CheckpointError as exc:
            if index + 1 == len(candidates):
                raise
            log.info(f"{name}: resume state {directory} is incomplete ({exc}); falling back to "
                     f"the previous epoch's state in {candidates[index + 1]}")
            continue
        log.info(f"{name}: resuming after epoch {len(state.history)} from {directory}")
        return state
    return None


def load_train_state(resume_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, sched, scaler,
                     method=None) -> TrainState:
    """Restore what :func:`save_train_state` wrote into ``model``, ``opt``, ``sched``, ``scaler``
    (and ``method``'s own tensors); a torn or foreign state raises :class:`CheckpointError`."""
    saved = verify_train_state(resume_dir)
    try:
        model.load_state_dict(load_file(str(resume_dir / "last.safetensors")))
        if method_state(method):  # before the optimizer, whose state refers to these parameters
            method.load_state_dict(load_file(str(resume_dir / METHOD_FILE)))
        opt.load_state_dict(tensors_to_state(load_file(str(resume_dir / "optimizer.safetensors")), saved["optimizer"]))
        sched.load_state_dict({**sched.state_dict(), **saved["scheduler"]})
        _load_scaler(scaler, saved.get("grad_scaler") or {})
        best = load_file(str(resume_dir / "best.safetensors"))
    except Exception as exc:  # a torn or foreign resume state must not be half-used
        raise CheckpointError(f"{resume_dir}: cannot resume from this state ({exc}); "
                              f"delete it to start over") from None
    return TrainState(saved["history"], saved["best_epoch"], saved["best_score"], best)


def _load_scaler(scaler, saved: dict) -> None:
    """Restore the fp16 loss scale, so a resumed run does not start again at 65536 and skip the
    steps that finding its scale costs. States saved without scaling (fp32, bf16) have none."""
    if saved and scaler.is_enabled():
        scaler.load_state_dict(saved)
