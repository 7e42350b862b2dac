"""A frozen model's inference passes in ONNX Runtime: the teacher's outputs for the view bank, the
shift battery and the evaluations run the same function 2-3x faster there than in PyTorch eager
on a CPU (EfficientNet-Lite0 at 224 px, 2 threads, batch 32: 177 against 68 images/s;
docs/performance.md).

The model is exported once to a temporary file (removed when the runner is garbage-collected)
and checked against PyTorch on a batch of random images before it is used: when the logits differ
by more than ``TOLERANCE`` (or the export fails) the runner is None and the caller keeps PyTorch.
Only frozen, eval-mode models may be run this way: the session holds a copy of the weights.
"""

from __future__ import annotations

import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdistill.errors import KdistillError
from kdistill.log import log

TOLERANCE = 1e-3  # max |logit difference| on the check batch; fp32 kernels differ by ~1e-5
CHECK_BATCH = 4


def onnx_runner(model: nn.Module, *, channels: int, input_size: int, threads: int, what: str
                ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``images [B, C, S, S] float32 -> logits [B, K]`` through ONNX Runtime, or None when
    onnxruntime is not installed or the exported model does not match ``model``."""
    try:
        import onnxruntime  # noqa: F401  (an optional extra)
    except ImportError:
        return None
    from kdistill.deploy.export import torch_to_onnx
    from kdistill.deploy.onnx_model import open_session

    started = time.perf_counter()
    folder = tempfile.TemporaryDirectory(prefix="kdistill-runner-")
    path = Path(folder.name) / "model.onnx"
    model.eval()
    try:
        torch_to_onnx(model, channels, input_size, path)
        session = open_session(path, threads)
    except KdistillError as exc:
        folder.cleanup()
        log.info(f"{what}: stays in PyTorch for inference ({exc})")
        return None
    name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        return torch.from_numpy(session.run(None, {name: array})[0])

    difference = _check(model, run, channels, input_size)
    if not difference <= TOLERANCE:  # also catches NaN
        folder.cleanup()
        log.info(f"{what}: stays in PyTorch for inference (ONNX Runtime logits differ by {difference:.1e})")
        return None
    weakref.finalize(run, folder.cleanup)  # the file lives as long as the runner
    log.info(f"{what}: inference in ONNX Runtime ({threads} threads; exported and checked in "
             f"{time.perf_counter() - started:.1f}s, max |logit difference| {difference:.1e})")
    return run


def _check(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], channels: int, input_size: int) -> float:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(CHECK_BATCH, channels, input_size, input_size, generator=generator)
    with torch.no_grad():
        expected = model(images).float()
    return float((run(images).float() - expected).abs().max())
