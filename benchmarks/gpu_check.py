"""GPU check: distil a student from a live ResNet-18 teacher on generated images, once per
precision (fp32, bf16, fp16) in one process, and print training throughput and peak GPU memory.

    python benchmarks/gpu_check.py                  # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --images 64 --size 32 --precision fp32 bf16   # smoke run

On a machine without CUDA (and without --device cpu) it says so and exits 0. The figures are
measured here, nothing is stored: throughput = training images x epochs / wall time of ``fit``
(which includes one validation pass per epoch), peak memory = torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdistill.models.checkpoint import architecture
from kdistill.data import load_dataset
from kdistill.distill import LiveTeacher, build_method, freeze
from kdistill.models import build_model
from kdistill.engine.loop import fit
from kdistill.config import DataConfig, TrainConfig


def write_images(root: Path, count: int, size: int) -> None:
    """Two classes of noise images, dark and bright, as PNGs in ``root/train/<class>/``."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("dark", "bright")):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(count // 2):
            pixels = np.clip(rng.normal(70 + 110 * label, 40, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i:05d}.png")


def measure(data, precision: str, device: str, args, out: Path) -> dict:
    """Distil the reference student for ``args.epochs`` epochs; return throughput and peak memory."""
    torch.manual_seed(0)
    teacher = freeze(build_model("resnet18", 2, input_size=args.size)).to(device)
    student = build_model(args.student, 2, input_size=args.size)
    meta = {"architecture": architecture(args.student, 2, args.size, 3, {})}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = fit(student, build_method("kd", alpha=0.5, temperature=4.0), data, name=f"student-{precision}",
                 checkpoint_dir=out / precision, checkpoint_meta=meta, resume_dir=out / f"resume-{precision}",
                 teacher=LiveTeacher(teacher),
                 train=TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=1e-3), progress=False,
                 device=device, precision=precision)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    row = {"precision": precision, "images_per_s": round(args.epochs * len(data.train) / seconds, 1),
           "seconds": round(seconds, 2), "final_train_loss": round(result.history[-1]["train_loss"], 4)}
    if device == "cuda":
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="generated training images")
    parser.add_argument("--size", type=int, default=224, help="image size")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--student", default="reference_student")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to PyTorch; nothing to measure on this machine")
        return 0
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "data", args.images, args.size)
        data = load_dataset(DataConfig(root=str(root / "data"), input_size=args.size, val_fraction=0.1,
                                       test_fraction=0.1, min_val_images=1, cache_dir=None))
        rows = [measure(data, p, args.device, args, root / "out") for p in args.precision
                if not (p == "fp16" and args.device == "cpu")]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    if args.json:
        print(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=2))
        return 0
    print(f"{name}, torch {torch.__version__}: {len(data.train)} training images {args.size}x{args.size}, "
          f"batch {args.batch}, {args.epochs} epochs, live resnet18 teacher -> {args.student}")
    base = rows[0]["images_per_s"]
    for row in rows:
        memory = f"  peak {row['peak_gpu_mib']:8.1f} MiB" if "peak_gpu_mib" in row else ""
        print(f"  {row['precision']:5s} {row['images_per_s']:9.1f} img/s  ({row['images_per_s'] / base:4.2f}x "
              f"{rows[0]['precision']}){memory}  final train loss {row['final_train_loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
