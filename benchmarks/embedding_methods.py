"""rkd on stored teacher embeddings against kd on cached logits, side by side in one process.

    python benchmarks/embedding_methods.py [--data FOLDER] [--images 512] [--views 4] [--rounds 3]
                                           [--live-steps 5] [--json]

N images of ``FOLDER/train`` (or random images without ``--data``) at 224x224, a 4-view bank of the
chest X-ray config's views, materialized as uint8; the chest config's student (``kd_plain`` width
8, depth 3, stem stride 2) and teacher architecture (EfficientNet-Lite0, random weights: speed does
not depend on them). Reported:

- ``logits_table_s`` / ``embedding_table_s``: one teacher pass over every (image, view) for each table
  (PyTorch, no ONNX Runtime), and ``embedding_table_mb`` at float32 and float16;
- ``kd_epoch_s`` and ``rkd_stored_epoch_s``: median epochs of the same training loop (batch 32,
  AdamW), alternating for ``--rounds`` rounds; ``rkd_vs_kd`` their ratio (the target is <= 1.2);
- ``rkd_live_epoch_s``: rkd with the teacher run live on every step, extrapolated from
  ``--live-steps`` timed steps, and ``live_vs_stored``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdistill.data import DatasetBundle, ImageSplit
from kdistill.data.cache import cached_decode
from kdistill.data.folder import sample_train_files
from kdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kdistill.data.views import VIEW_WIDTH, AugmentSpec, draw_views, materialize_views
from kdistill.distill import CachedTeacher, FeatureTeacher, build_method
from kdistill.distill.teacher import StoredEmbeddingTeacher
from kdistill.engine.loop import training_batches
from kdistill.models import build_model

SIZE = 224
CHEST_VIEWS = AugmentSpec(hflip=True, scale=(0.6, 1.0), rotation=7, brightness=0.25, contrast=0.25,
                          low_resolution=0.5, blur=1.5, gamma=0.5, noise=0.05)


def images(folder: str | None, count: int, cache_dir) -> torch.Tensor:
    if folder is None:
        return torch.randint(0, 256, (count, 1, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    _, paths, _ = sample_train_files(Path(folder), count)
    return cached_decode(paths, SIZE, 1, "error", cache_dir)[0]


def epoch(student, method, outputs, bundle, seed: int, max_steps: int | None = None) -> tuple[float, int]:
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    started, steps = time.perf_counter(), 0
    for batch in training_batches(student, outputs, bundle, 32, torch.Generator().manual_seed(seed)):
        loss = method(batch, student, outputs)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if max_steps is not None and steps == max_steps:
            break
    return time.perf_counter() - started, steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a folder with train/<class>/ images (default: random images)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--live-steps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        pixels = images(args.data, args.images, Path(tmp)).clone()
    labels = torch.arange(len(pixels)) % 2
    names = [f"img{i}" for i in range(len(pixels))]
    split = ImageSplit(pixels, labels, names, names, None)
    bank = draw_views(len(split) * args.views, torch.Generator().manual_seed(0), CHEST_VIEWS,
                      partner_count=len(split)).view(len(split), args.views, VIEW_WIDTH)
    bank_images = materialize_views(split.images, bank, split.images)
    bundle = DatasetBundle(["NORMAL", "PNEUMONIA"], 1, split, split, split, SIZE, 3, {}, True, augment=None,
                           bank=bank, bank_images=bank_images)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    teacher = build_model("timm:tf_efficientnet_lite0", 2, input_size=SIZE, pretrained=False)
    common = dict(channels=3, mean=mean, std=std, views=bank, bank_images=bank_images)
    started = time.perf_counter()
    logits = CachedTeacher(teacher, split, **common)
    logits_s = time.perf_counter() - started
    started = time.perf_counter()
    embeddings = StoredEmbeddingTeacher(teacher, split, **common)
    embedding_s = time.perf_counter() - started

    def student():
        torch.manual_seed(0)
        return build_model("kd_plain", 2, input_size=SIZE, width=8, depth=3, stem_stride=2)

    kd, rkd = build_method("kd", alpha=0.5, temperature=2.0), build_method("rkd")
    rkd_student = student()
    rkd.bind(rkd_student, embeddings, torch.zeros(1, 3, SIZE, SIZE))
    kd_times, rkd_times = [], []
    kd_student = student()
    for round_index in range(args.rounds):
        kd_times.append(epoch(kd_student, kd, logits, bundle, round_index)[0])
        rkd_times.append(epoch(rkd_student, rkd, embeddings, bundle, round_index)[0])
    live_teacher = FeatureTeacher(teacher)
    live = build_method("rkd")
    live_student = student()
    live.bind(live_student, live_teacher, torch.zeros(1, 3, SIZE, SIZE))
    live_s, steps = epoch(live_student, live, live_teacher, bundle, 0, args.live_steps)
    steps_per_epoch = -(-len(split) // 32)
    result = {
        "images": len(split), "views": args.views, "embedding_dim": embeddings.table.shape[-1],
        "logits_table_s": round(logits_s, 2), "embedding_table_s": round(embedding_s, 2),
        "embedding_table_mb_float32": round(embeddings.table.numel() * 4 / 1e6, 1),
        "embedding_table_mb_float16": round(embeddings.table.numel() * 2 / 1e6, 1),
        "kd_epoch_s": round(statistics.median(kd_times), 3),
        "rkd_stored_epoch_s": round(statistics.median(rkd_times), 3),
        "rkd_live_epoch_s": round(live_s / steps * steps_per_epoch, 2),
    }
    result["rkd_vs_kd"] = round(result["rkd_stored_epoch_s"] / result["kd_epoch_s"], 3)
    result["live_vs_stored"] = round(result["rkd_live_epoch_s"] / result["rkd_stored_epoch_s"], 1)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
