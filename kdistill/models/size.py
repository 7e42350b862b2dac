"""Size and compute of a model, counted the same way for every model and wherever it is reported
(results rows, the student budget, the student search, the bench).

MACs come from PyTorch's own FLOP counter (``torch.utils.flop_counter``; 1 MAC = 2 FLOPs; it counts
convolutions and matrix products, which dominate)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, channels: int) -> int:
    """Multiply-accumulates of one forward pass on one ``channels x input_size x input_size`` image."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, channels, input_size, input_size))
    model.train(was_training)
    return counter.get_total_flops() // 2


def count_bytes(model: nn.Module, input_size: int, channels: int) -> int:
    """Bytes one forward pass on one image reads and writes, operator by operator: every operator's
    tensor inputs (weights included) and outputs as PyTorch's eager operators run them; views and
    in-place operators count nothing (runtimes fuse those anyway). A small CNN is limited by this
    memory traffic, not by its MACs, so the two ratios together explain a latency ratio."""
    was_training = model.training
    model.eval()
    image = torch.zeros(1, channels, input_size, input_size)
    counter = _ByteCounter()
    with torch.inference_mode(), counter:  # as timed: some operators differ under no_grad
        model(image)
    model.train(was_training)
    return counter.total


class _ByteCounter(TorchDispatchMode):
    """Sums the bytes of each dispatched operator's tensors; an output that shares storage with an
    input is a view (reshape, flatten, transpose) and moves nothing."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        input_storages = {t.untyped_storage().data_ptr() for t in inputs}
        if all(t.untyped_storage().data_ptr() in input_storages for t in outputs):
            return out  # a view: no data moved
        self.total += sum(t.numel() * t.element_size() for t in inputs + outputs)
        return out


def model_size(model: nn.Module, meta: dict) -> dict:
    """Parameters, MACs and bytes moved by one forward pass on one image, counted on the model's
    own architecture (not its deploy form): the figures describe the architecture."""
    shape = (meta["input_size"], meta["channels"])
    return {"params": count_parameters(model), "macs": count_macs(model, *shape),
            "bytes": count_bytes(model, *shape)}
