"""What distillation costs next to training the student alone, measured side by side in one process.

    python benchmarks/kd_speed.py [--data FOLDER] [--images 512] [--fast-path auto|off] [--json]

Three training loops over the same N images of ``FOLDER/train`` (224x224, batch 32 by default), the
reference student, a ResNet-18 teacher (random weights: speed does not depend on them):

(a) naive: the common recipe, an ImageFolder-style dataset that opens, decodes, resizes, flips and
    normalizes every image with PIL/torchvision at every epoch (a DataLoader), and the
    teacher run live on every batch. Only ``--naive-steps`` steps are timed (it is slow).
(b) kdistill training the student alone (``kdistill.engine.loop.fit``, cross-entropy).
(c) kdistill distilling the same student with the decoded-image cache and the teacher-output cache.
    Building both caches is timed separately (``cache_build_s``); later runs reuse them.
(d) the distilled student on a view bank of ``--bank-views`` K views per image (crop scale 0.6-1,
    rotation 7, brightness/contrast 0.25, flip), and the student alone drawing from the same bank.
    The bank is materialized: every view rendered once into uint8 images, which the teacher's table
    and the students' batches both read (the students' fast path included).
    ``bank_build_s`` (rendering every view, running the teacher on it, writing the table) is
    set beside ``bank_teacher_forward_s``, the teacher's forward passes alone over the same K*N
    pre-rendered views. ``bank_vs_student`` is (d)'s distilled images/s over (b)'s;
    ``bank_vs_student_same_views`` over the student alone on the bank.
(a') the naive loop once more at the end: kdistill's training raises glibc's malloc thresholds for
    the whole process (kdistill/engine/allocator.py), so this is the naive recipe with that one setting.

(b) and (c) alternate for ``--rounds`` rounds and each reports its median epoch. ``data_wait_share``
is the time the kdistill loop spends producing its batches (one pass of the batch iterator the
distillation loop uses, ``kdistill.engine.loop.training_batches``, memory-mapped decoded cache) over the
median distillation epoch. The caches go to a
temporary folder, never to ``~/.cache``. ``--fast-path off`` runs every student through its own
modules (``student.fast_path: off``); its (b) against the default run's (b) is what the reference
student's CPU fast path (kdistill/models/reference/) gains.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from kdistill.models.checkpoint import architecture
from kdistill.data import DatasetBundle, ImageSplit
from kdistill.data.cache import cached_decode
from kdistill.data.folder import sample_train_files
from kdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kdistill.data.views import VIEW_WIDTH, AugmentSpec, draw_views, materialize_views, render_views
from kdistill.distill import CachedTeacher, build_method
from kdistill.distill.losses import kd_loss
from kdistill.log import log
from kdistill.models import build_model
from kdistill.models.fast_path import FAST_PATH_MODES, set_fast_path
from kdistill.engine.loop import fit, training_batches
from kdistill.config import TrainConfig

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"
ALPHA, TEMPERATURE = 0.5, 4.0


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    classes, paths, labels = sample_train_files(Path(args.data), args.images)
    was_disabled, log.disabled = log.disabled, True  # fit's epoch lines would interleave with the figures
    try:
        naive_img_s, naive_wait = time_naive(paths, labels, args)
        with tempfile.TemporaryDirectory(prefix="kd_speed_cache_") as cache_dir:
            figures = time_kdistill(classes, paths, labels, Path(cache_dir), args)
        # kdistill's fit raised glibc's malloc thresholds for this process (kdistill/engine/allocator.py);
        # the naive loop timed again under the same allocator shows what that alone would give it.
        figures["naive_same_allocator_img_s"], _ = time_naive(paths, labels, args)
    finally:
        log.disabled = was_disabled
    figures.update(naive_img_s=naive_img_s, naive_data_wait_share=naive_wait,
                   threads=torch.get_num_threads(), images=len(paths), input_size=args.size)
    figures.update(batch=args.batch, fast_path=args.fast_path)
    figures["distill_vs_student"] = figures["distill_img_s"] / figures["student_img_s"]
    figures["distill_vs_naive"] = figures["distill_img_s"] / naive_img_s
    figures["distill_vs_naive_same_allocator"] = figures["distill_img_s"] / figures["naive_same_allocator_img_s"]
    figures = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    print(json.dumps(figures) if args.json else report(figures))
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a folder with train/<class>/ images")
    parser.add_argument("--images", type=int, default=512, help="images taken from train/ (default 512)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--naive-steps", type=int, default=12, help="timed steps of the naive loop")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per kdistill measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating (b)/(c) measurements")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--fast-path", choices=FAST_PATH_MODES, default="auto",
                        help="the students' student.fast_path setting (default auto)")
    parser.add_argument("--bank-views", type=int, default=8, help="K views per image of the bank (d)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not (Path(args.data) / "train").is_dir():
        sys.exit(f"{args.data}: no train/ folder (expected {args.data}/train/<class>/<images>)")
    return args


# --- (a) the common recipe ----------------------------------------------------------------

class NaiveImageFolder(torch.utils.data.Dataset):
    """What torchvision's ImageFolder + the usual transforms do: decode every image every epoch."""

    def __init__(self, paths: list[Path], labels: list[int], size: int):
        self.paths, self.labels = paths, labels
        self.transform = transforms.Compose([
            transforms.Resize((size, size)), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


def time_naive(paths: list[Path], labels: list[int], args) -> tuple[float, float]:
    """Images/s of (a) over ``naive_steps`` steps after one warm-up step, and its data-wait share."""
    torch.manual_seed(0)
    teacher = build_model("resnet18", 2, input_size=args.size).eval()
    student = reference_student(2, args)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(NaiveImageFolder(paths, labels, args.size),
                                         batch_size=args.batch, shuffle=True)
    batches = iter(loader)
    waited = total = 0.0
    for step in range(args.naive_steps + 1):
        started = time.perf_counter()
        images, targets = next(batches)
        fetched = time.perf_counter()
        with torch.no_grad():
            teacher_logits = teacher(images)
        logits = student(images)
        loss = (1 - ALPHA) * F.cross_entropy(logits, targets) + ALPHA * kd_loss(logits, teacher_logits, TEMPERATURE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step:  # step 0 warms up
            waited += fetched - started
            total += time.perf_counter() - started
    return args.naive_steps * args.batch / total, waited / total


# --- (b) and (c) kdistill -------------------------------------------------------------------

def time_kdistill(classes, paths, labels, cache_dir: Path, args) -> dict:
    started = time.perf_counter()
    images, kept, bad, key = cached_decode(paths, args.size, 3, "skip", cache_dir)
    image_cache_s = time.perf_counter() - started
    if bad:
        sys.exit(f"{bad[0][0]}: {bad[0][1]}")
    train = ImageSplit(images, torch.tensor(labels), [str(p) for p in paths], [str(p) for p in paths], key)
    # fit validates every epoch: a small validation split (every k-th image, so both classes) keeps it cheap.
    pick = torch.arange(0, len(train), max(1, len(train) // args.batch))[:args.batch]
    val = ImageSplit(images[pick], train.labels[pick], [train.names[i] for i in pick], [train.names[i] for i in pick])
    data = DatasetBundle(classes, classes[-1], train, val, val, args.size, 3, {}, hflip=True)
    torch.manual_seed(0)
    teacher = build_model("resnet18", len(classes), input_size=args.size)
    started = time.perf_counter()
    mean, std = data.normalization
    cached = CachedTeacher(teacher, train, channels=3, mean=mean, std=std, cache_dir=cache_dir)
    teacher_cache_s = time.perf_counter() - started
    bank = draw_views(len(train) * args.bank_views, torch.Generator().manual_seed(0), BANK_SPEC)
    bank = bank.view(len(train), args.bank_views, VIEW_WIDTH)
    started = time.perf_counter()
    # The bank rendered once into uint8 images, then the teacher's table from those very images.
    bank_images = materialize_views(train.images, bank, train.images)
    banked = CachedTeacher(teacher, train, channels=3, mean=mean, std=std, cache_dir=cache_dir, views=bank,
                           bank_images=bank_images)
    bank_build_s = time.perf_counter() - started
    bank_data = dataclasses.replace(data, bank=bank, bank_images=bank_images)
    student_epochs, distill_epochs, waits, bank_epochs, bank_alone_epochs = [], [], [], [], []
    for _ in range(args.rounds):
        student_epochs += epoch_seconds(data, build_method("ce"), None, args)
        distill_epochs += epoch_seconds(data, build_method("kd", alpha=ALPHA, temperature=TEMPERATURE),
                                        cached, args)
        waits.append(batch_seconds(data, cached, args))
        bank_epochs += epoch_seconds(bank_data, build_method("kd", alpha=ALPHA, temperature=TEMPERATURE),
                                     banked, args)
        bank_alone_epochs += epoch_seconds(bank_data, build_method("ce"), None, args)
    distill_epoch = statistics.median(distill_epochs)
    student_img_s = len(train) / statistics.median(student_epochs)
    bank_img_s = len(train) / statistics.median(bank_epochs)
    return {"bank_views": args.bank_views, "bank_build_s": bank_build_s,
            "bank_teacher_forward_s": teacher_forward_seconds(teacher, train, bank, args),
            "bank_table_mb": banked.table.numel() * banked.table.element_size() / 1e6,
            "bank_img_s": bank_img_s, "bank_vs_student": bank_img_s / student_img_s,
            "bank_vs_student_same_views": bank_img_s * statistics.median(bank_alone_epochs) / len(train),
            "student_img_s": student_img_s,
            "distill_img_s": len(train) / distill_epoch,
            "data_wait_share": statistics.median(waits) / distill_epoch,
            "cache_build_s": image_cache_s + teacher_cache_s,
            "image_cache_build_s": image_cache_s, "teacher_cache_build_s": teacher_cache_s}


BANK_SPEC = AugmentSpec(scale=(0.6, 1.0), rotation=7, brightness=0.25, contrast=0.25)


def teacher_forward_seconds(teacher, train: ImageSplit, bank: torch.Tensor, args) -> float:
    """The teacher's forward passes alone over every view of the bank, rendered beforehand."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    teacher = teacher.eval()
    total = 0.0
    for column in range(bank.shape[1]):
        for start in range(0, len(train), 64):
            rows = torch.arange(start, min(start + 64, len(train)))
            images = render_views(train.images[rows], bank[rows, column], train.images, out_size=args.size,
                                  channels=3, mean=mean, std=std).contiguous(memory_format=torch.channels_last)
            started = time.perf_counter()
            with torch.no_grad():
                teacher(images)
            total += time.perf_counter() - started
    return total


def epoch_seconds(data: DatasetBundle, method, teacher, args) -> list[float]:
    """Seconds of each epoch of ``fit`` (the training loop and its tiny validation pass)."""
    torch.manual_seed(1)
    student = reference_student(len(data.classes), args)
    meta = {"architecture": architecture("reference_student", len(data.classes), args.size, 3, {})}
    with tempfile.TemporaryDirectory(prefix="kd_speed_run_") as out:
        result = fit(student, method, data, name="bench", checkpoint_dir=Path(out) / "ckpt",
                     checkpoint_meta=meta, resume_dir=Path(out) / "resume", teacher=teacher,
                     train=TrainConfig(epochs=args.epochs, batch_size=args.batch), progress=False)
    return [record["seconds"] for record in result.history]


def batch_seconds(data: DatasetBundle, teacher, args) -> float:
    """One epoch of the distillation loop's batch iterator alone: the time the loop waits for data."""
    student = reference_student(len(data.classes), args)
    started = time.perf_counter()
    for _ in training_batches(student, teacher, data, args.batch, torch.Generator().manual_seed(0)):
        pass
    return time.perf_counter() - started


def reference_student(classes: int, args) -> torch.nn.Module:
    return set_fast_path(build_model("reference_student", classes, input_size=args.size), args.fast_path)


def report(f: dict) -> str:
    return "\n".join([
        f"{f['images']} images at {f['input_size']}x{f['input_size']}, batch {f['batch']}, {f['threads']} torch threads, "
        f"student fast path {f['fast_path']}",
        f"(a) naive loop (PIL decode every epoch, live ResNet-18): {f['naive_img_s']:8.1f} images/s "
        f"(data wait {f['naive_data_wait_share']:.0%} of step time)",
        f"(b) kdistill, student alone:                          {f['student_img_s']:8.1f} images/s",
        f"(c) kdistill, distilled with the caches:               {f['distill_img_s']:8.1f} images/s "
        f"(data wait {f['data_wait_share']:.0%} of step time)",
        f"cache build (once): {f['cache_build_s']:.1f}s = decoded images {f['image_cache_build_s']:.1f}s "
        f"+ teacher outputs {f['teacher_cache_build_s']:.1f}s",
        f"(a') naive loop again, after kdistill raised malloc's thresholds: {f['naive_same_allocator_img_s']:.1f} images/s",
        f"(d) distilled on a bank of {f['bank_views']} views: {f['bank_img_s']:.1f} images/s, "
        f"(d)/(b) = {f['bank_vs_student']:.2f}, over the student alone on the bank {f['bank_vs_student_same_views']:.2f}; "
        f"bank build {f['bank_build_s']:.1f}s (teacher forward alone {f['bank_teacher_forward_s']:.1f}s), "
        f"table {f['bank_table_mb']:.2f} MB",
        f"(c)/(b) = {f['distill_vs_student']:.2f}   (c)/(a) = {f['distill_vs_naive']:.1f}   "
        f"(c)/(a') = {f['distill_vs_naive_same_allocator']:.1f}"])


if __name__ == "__main__":
    main()
