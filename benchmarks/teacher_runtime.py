"""Images per second of a frozen teacher's inference passes (the teacher table, the shift battery,
evaluation) in PyTorch eager, channels-last, and through kdistill's ONNX Runtime runner, timed side
by side in one process (rounds interleaved, rotating order; medians), and the ratio.

    python benchmarks/teacher_runtime.py --model timm:tf_efficientnet_lite0 --size 224 --batch 32

Random weights: the speed of a network does not depend on its values. The runner is the one
``teacher.onnx_inference`` uses (kdistill/deploy/runner.py), checked against PyTorch first.
"""

from __future__ import annotations

import argparse
import json

import torch

from kdistill.deploy.profile import time_interleaved, torch_threads
from kdistill.deploy.runner import onnx_runner
from kdistill.distill.teacher import freeze
from kdistill.models import build_model


def measure(model_name: str, size: int, batch: int, threads: int, rounds: int) -> dict:
    """Images/s of each runtime and the ONNX Runtime / PyTorch ratio."""
    with torch_threads(threads):
        torch.manual_seed(0)
        model = freeze(build_model(model_name, 2, input_size=size, pretrained=False))
        runner = onnx_runner(model, channels=3, input_size=size, threads=threads, what=model_name)
        if runner is None:
            raise SystemExit("ONNX Runtime is not installed or the export did not match (pip install 'kdistill[export]')")
        images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)

        def eager():
            with torch.no_grad():
                model(images)

        timings = time_interleaved({"pytorch": eager, "onnxruntime": lambda: runner(images)}, rounds=rounds)
    per_second = {name: batch / seconds for name, (seconds, _) in timings.items()}
    return {"model": model_name, "size": size, "batch": batch, "threads": threads, "rounds": rounds,
            "images_per_s": per_second, "onnxruntime_over_pytorch": per_second["onnxruntime"] / per_second["pytorch"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timm:tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = measure(args.model, args.size, args.batch, args.threads, args.rounds)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        rates = figures["images_per_s"]
        print(f"{args.model} at {args.size} px, batch {args.batch}, {args.threads} threads: PyTorch eager "
              f"{rates['pytorch']:.0f} img/s, ONNX Runtime {rates['onnxruntime']:.0f} img/s: "
              f"{figures['onnxruntime_over_pytorch']:.2f}x")
    return figures


if __name__ == "__main__":
    main()
