"""Run a model over a split and return its logits (eval mode, no_grad, fixed order);
``kdistill.eval.calibration.scaled_probs`` turns them into probabilities at a checkpoint's temperature."""

from __future__ import annotations

import torch
from torch import nn

from kdistill.data import ImageSplit, iterate_batches
from kdistill.log import Counted
from kdistill.models.inference import inference_function


def predict_logits(model: nn.Module, split: ImageSplit, *, channels: int, mean, std,
                   batch_size: int = 32, what: str | None = None) -> torch.Tensor:
    """Logits ``[N, K]`` in the split's order; no shuffling, no augmentation.

    Runs the model's inference function (:func:`kdistill.models.inference.inference_function`: a
    registered ONNX Runtime session for a frozen teacher, else the deploy form, the same function
    rewritten to run faster) on channels-last batches, which CPU convolutions with few input
    channels run faster. Batches of 32: larger batches hold far more activation memory for no
    speed on a CPU, and validation runs while training still holds its memory. ``what`` names a
    progress line over the images (none for the validation pass of every epoch).
    """
    was_training = model.training
    model.eval()
    runner = inference_function(model) if _on_cpu(model) else model
    outputs = []
    if what is not None:
        runner = Counted(runner, total=len(split), what=what)
    with torch.no_grad():
        for batch in iterate_batches(split, batch_size, channels=channels, mean=mean, std=std,
                                     channels_last=True):
            outputs.append(runner(batch.images).float())
    model.train(was_training)
    return torch.cat(outputs)


def _on_cpu(model: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())
