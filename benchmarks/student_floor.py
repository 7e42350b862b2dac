"""How far the reference student's batch-1 latency can fall in ONNX Runtime, next to ResNet-18's,
measured side by side in one process.

    python benchmarks/student_floor.py [--threads 1] [--rounds 40] [--input-size 224] [--json]

``kdistill bench`` compares whole models. This script asks what any exact rewrite of the student's
classifier half could still gain, by timing the parts no rewrite can skip. Every variant is an ONNX
file run by ONNX Runtime (all graph optimizations, the same thread count), timed interleaved round
by round (``kdistill.deploy.profile.time_interleaved``), random weights and inputs (speed does not depend
on them):

- ``resnet18 int8``: ResNet-18 quantized as ``kdistill export --int8`` does (random calibration
  inputs): its fastest runtime on this machine.
- ``student``: the reference student's inference form, the file ``kdistill export`` writes.
- ``student conv only``: the inference form's first layer alone (the stride-2 4x4 convolution with
  16 output channels), followed by a global max pool so that the output handed back is tiny. This
  is what remains if everything after the convolution (max over window positions, ReLU, classifier)
  cost nothing.
- ``original conv only``: the student's convolution as trained (3x3, 4 output channels, full
  resolution) with the same global max pool: the other way to run the same arithmetic (5.4 M MACs
  instead of 9.6 M with the zero taps).
- ``input read only``: a global max over the input image, the cost of touching 602 KB once.

It prints each variant's median latency and ResNet-18 int8's latency divided by it: the best ratio
a student built on that part could reach.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdistill.deploy.export import quantize_int8, torch_to_onnx
from kdistill.models import build_model, deploy_form
from kdistill.deploy.onnx_model import open_session
from kdistill.deploy.profile import time_interleaved

CHANNELS, CLASSES = 3, 2
TARGET_RATIO = 40.0


class ConvThenGlobalMax(nn.Module):
    """One convolution, then a max over the whole output (keeps the returned tensor tiny)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(self.conv(x), dim=(2, 3))


class GlobalMax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=(2, 3))


def variants(size: int) -> dict[str, nn.Module]:
    """The fp32 modules to time, by name (ResNet-18 is quantized afterwards)."""
    torch.manual_seed(0)
    student = build_model("reference_student", CLASSES, input_size=size, in_channels=CHANNELS).eval()
    inference_form = deploy_form(student)
    return {
        "resnet18 int8": build_model("resnet18", CLASSES, input_size=size, in_channels=CHANNELS).eval(),
        "student": inference_form,
        "student conv only": ConvThenGlobalMax(inference_form.conv),
        "original conv only": ConvThenGlobalMax(student.features[0]),
        "input read only": GlobalMax(),
    }


def sessions(folder: Path, threads: int, size: int) -> dict:
    """One ONNX Runtime session per variant; ResNet-18's file is quantized to int8 first."""
    made = {}
    for name, module in variants(size).items():
        path = folder / (name.replace(" ", "_") + ".onnx")
        torch_to_onnx(module.eval(), CHANNELS, size, path)
        if name == "resnet18 int8":
            generator = np.random.default_rng(0)
            calibration = [generator.standard_normal((8, CHANNELS, size, size), dtype=np.float32)
                           for _ in range(4)]
            quantized = folder / "resnet18_int8_q.onnx"
            quantize_int8(path, quantized, calibration)
            path = quantized
        made[name] = open_session(path, threads)
    return made


def measure(threads: int, rounds: int, size: int = 224) -> dict:
    image = np.random.default_rng(1).standard_normal((1, CHANNELS, size, size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        made = sessions(Path(scratch), threads, size)
        calls = {name: (lambda s=s, feed={s.get_inputs()[0].name: image}: s.run(None, feed))
                 for name, s in made.items()}
        timed = time_interleaved(calls, rounds, warmup=5)
    reference = timed["resnet18 int8"][0]
    rows = [{"variant": name, "latency_ms": median * 1e3, "spread_ms": spread * 1e3,
             "ratio_vs_resnet18_int8": reference / median} for name, (median, spread) in timed.items()]
    return {"threads": threads, "rounds": rounds, "input_size": size, "rows": rows,
            "student_ms_needed_for_target": reference * 1e3 / TARGET_RATIO, "target_ratio": TARGET_RATIO}


def format_result(result: dict) -> str:
    lines = [f"ONNX Runtime, batch 1, {result['input_size']} px, {result['threads']} thread(s), "
             f"median of {result['rounds']} "
             "interleaved rounds (spread = max - min)", "",
             f"{'variant':20s} {'ms':>8s} {'spread':>8s} {'resnet18 int8 / variant':>24s}"]
    for row in result["rows"]:
        lines.append(f"{row['variant']:20s} {row['latency_ms']:8.3f} {row['spread_ms']:8.3f} "
                     f"{row['ratio_vs_resnet18_int8']:23.1f}x")
    lines += ["", f"a {result['target_ratio']:.0f}x student would need "
              f"{result['student_ms_needed_for_target']:.3f} ms"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = measure(args.threads, args.rounds, args.input_size)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
