"""The reference student's block path against its fused path alone, side by side in one process.

    python benchmarks/block_path.py [--images 1024] [--size 224] [--rounds 7] [--json]

The reference student trains on N random grayscale images (speed does not depend on their
content) for one epoch of the training loop's own batches (batch 32, AdamW, cross-entropy), once
on raw pixel blocks (what the loop offers when only the student reads the batch: a cached teacher
or none) and once on ordinary normalized batches (what it gets beside a live teacher), where the
fused BatchNorm, ReLU and pooling step still runs. Epochs alternate, with the allocator setting
``fit`` uses; the medians are reported with ``blocks_speedup`` (plain epoch / block epoch; above
1: the block path is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from kdistill.data import DatasetBundle, ImageSplit
from kdistill.engine.allocator import keep_freed_memory
from kdistill.engine.loop import training_batches
from kdistill.models import build_model


class TeacherStub:
    """What the loop asks of a teacher: whether it reads the batch's images (then the batch must
    be ordinary normalized images, so the block path is off)."""

    def __init__(self, reads_images: bool):
        self.reads_images = reads_images


def bundle(count: int, size: int) -> DatasetBundle:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 1, size, size), dtype=torch.uint8, generator=generator)
    split = ImageSplit(images, torch.arange(count) % 2, [f"{i}.png" for i in range(count)], list(range(count)))
    return DatasetBundle(train=split, val=split, test=split, classes=["a", "b"], positive_class="b",
                         input_size=size, channels=3, info={})


def epoch(student, teacher: TeacherStub, data: DatasetBundle, seed: int) -> float:
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    started = time.perf_counter()
    for batch in training_batches(student, teacher, data, 32, torch.Generator().manual_seed(seed)):
        loss = F.cross_entropy(student(batch.images), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as fit() does: without it each step page-faults its memory back in
    data = bundle(args.images, args.size)
    student = build_model("reference_student", 2, input_size=args.size).train()
    paths = {"blocks": TeacherStub(reads_images=False), "plain": TeacherStub(reads_images=True)}
    epoch(student, paths["blocks"], data, 0)  # warm-up of both paths' kernels and allocations
    epoch(student, paths["plain"], data, 0)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for round_index in range(args.rounds):
        order = list(paths) if round_index % 2 == 0 else list(reversed(paths))
        for name in order:
            seconds[name].append(epoch(student, paths[name], data, round_index + 1))
    result = {"images": args.images, "size": args.size, "threads": torch.get_num_threads(),
              "block_epoch_s": round(statistics.median(seconds["blocks"]), 3),
              "plain_epoch_s": round(statistics.median(seconds["plain"]), 3)}
    result["blocks_speedup"] = round(result["plain_epoch_s"] / result["block_epoch_s"], 3)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
