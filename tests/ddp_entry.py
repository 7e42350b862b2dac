"""``python tests/ddp_entry.py ARGS`` = ``kdistill ARGS`` with one more student, ``plain_cnn``:
Conv -> ReLU -> MaxPool -> Linear, no BatchNorm and no dropout. test_distributed launches it under
torchrun. On CPU, BatchNorm in a data-parallel run normalizes each process's own batch (SyncBatchNorm
needs CUDA), and dropout draws per process, so models with either differ from a single-process run
by design, not by summation order; this model isolates what the test measures."""

from __future__ import annotations

import sys

from torch import nn

from kdistill.cli import main
from kdistill.models.students import STUDENTS


def plain_cnn(num_classes: int, input_size: int = 16, in_channels: int = 3, width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(width * (input_size // 2) ** 2, num_classes))


if __name__ == "__main__":
    STUDENTS["plain_cnn"] = plain_cnn
    raise SystemExit(main(sys.argv[1:]))
