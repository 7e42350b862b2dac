"""Where training runs and in which number format: ``device: auto|cpu|cuda`` and
``precision: fp32|bf16|fp16``.

bf16/fp16 use ``torch.autocast``: matrix products and convolutions run in 16 bits, while weights,
optimizer state and reductions stay float32. fp16 has a narrow exponent range, so its gradients are
scaled (``torch.amp.GradScaler``) to keep small values from flushing to zero; bf16 has float32's
range and needs no scaling. fp16 is CUDA-only here; bf16 works on CUDA and on CPU.
"""

from __future__ import annotations

import contextlib
import os

import torch

from kdistill.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(setting: str) -> torch.device:
    """``auto``: CUDA when available (this process's GPU under torchrun), else CPU."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for, but PyTorch sees no CUDA device here")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))


def check_precision(device: torch.device, precision: str) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision: fp16 needs a CUDA device (device: cuda); on CPU use bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast region for one training step (teacher and student alike); fp32: a no-op."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16; a pass-through (``enabled=False``) for fp32 and bf16."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
