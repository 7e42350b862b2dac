"""Deployable copies of a checkpoint: ONNX (dynamic batch, the preprocessing contract in its
metadata, parity-checked against PyTorch with ONNX Runtime), int8 ONNX by static quantization
calibrated on real images, and TorchScript. Nothing is written unless it passed its check."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdistill.models.checkpoint import load_checkpoint
from kdistill.data import ImageSplit, iterate_batches
from kdistill.fileio import atomic_file
from kdistill.data.imagefiles import evenly_spaced, load_images
from kdistill.eval.metrics import predict as decide
from kdistill.models import deploy_form
from kdistill.deploy.onnx_model import (INPUT_NAME, OUTPUT_NAME, ExportError, contract_from_meta,
                                open_session, require_onnx, require_onnxruntime, session_probs,
                                write_contract)

FORMATS = ("onnx", "torchscript")
DEFAULT_NAMES = {"onnx": "model.onnx", "int8": "model.int8.onnx", "torchscript": "model.torchscript.pt"}
FP32_TOLERANCE = 1e-4  # max |softmax difference|: float32 reordering noise is ~1e-6
MAX_CHECK_IMAGES = 1024  # a whole chest X-ray test set (624) fits
MAX_CALIBRATION_IMAGES = 256  # MinMax calibration ranges settle well before this
BATCH = 32


@dataclass
class CheckImages:
    """Images to compare runtimes on; ``labelled`` when ``split.labels`` are real classes."""

    split: ImageSplit
    labelled: bool
    source: str


def export_checkpoint(checkpoint: str | Path, fmt: str = "onnx", *, out: str | Path | None = None,
                      int8: bool = False, calibration: str | Path | ImageSplit | tuple | None = None,
                      check_images: str | Path | ImageSplit | tuple | None = None,
                      tolerance: float = FP32_TOLERANCE, threads: int = 1) -> dict:
    """Export ``checkpoint`` (a directory) to ``fmt``; return what was written and checked.

    Outputs default to the checkpoint directory (``model.onnx``, ``model.int8.onnx``,
    ``model.torchscript.pt``). The parity and int8 accuracy checks run on ``check_images``
    (a labelled folder or split; a ``(split, name)`` pair names it in the report), else on the
    calibration images, else on random images."""
    checkpoint = Path(checkpoint)
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if int8 and (fmt != "onnx" or calibration is None):
        raise ExportError("--int8: needs --format onnx and --calibration FOLDER (real images to calibrate on)")
    model, meta = load_checkpoint(checkpoint)
    checks = _check_images(check_images if check_images is not None else calibration, meta)
    path = _output_path(checkpoint, out, fmt)
    then = None
    if int8:  # calibration images are read before anything is written
        int8_path = path.with_name(path.name.removesuffix(".onnx") + ".int8.onnx")
        calib = _check_images(calibration, meta, MAX_CALIBRATION_IMAGES)

        def then(fp32_file: Path) -> dict:
            return {"int8": export_int8(fp32_file, int8_path, meta, calib, checks, threads)}
    try:
        if fmt == "torchscript":
            return {"checkpoint": str(checkpoint), **export_torchscript(model, meta, path, checks, tolerance)}
        return {"checkpoint": str(checkpoint), **export_onnx(model, meta, path, checks, tolerance, threads, then)}
    except OSError as exc:
        raise ExportError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _output_path(checkpoint: Path, out: str | Path | None, fmt: str) -> Path:
    """``--out FILE``, or the default file name inside ``--out FOLDER`` (an existing folder or a
    path ending in a separator) or inside the checkpoint directory."""
    if out is None:
        return checkpoint / DEFAULT_NAMES[fmt]
    path = Path(out)
    if path.is_dir() or str(out).endswith(("/", os.sep)):
        return path / DEFAULT_NAMES[fmt]
    return path


def _check_images(source, meta: dict, limit: int = MAX_CHECK_IMAGES) -> CheckImages:
    """A folder, an in-memory split (named or not), or (when nothing is given) 16 seeded random images."""
    name = None
    if isinstance(source, tuple):  # (split, what it is), e.g. (data.val, "validation split")
        source, name = source
    if isinstance(source, ImageSplit):
        source = evenly_spaced(source, limit)
        return CheckImages(source, bool((source.labels >= 0).all()), f"the {name or 'given split'}")
    if source is not None:
        split, labelled = load_images(Path(source), meta, limit)
        return CheckImages(split, labelled, str(source))
    generator = torch.Generator().manual_seed(0)
    shape = (16, meta["channels"], meta["input_size"], meta["input_size"])
    images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    names = [f"random[{i}]" for i in range(16)]
    return CheckImages(ImageSplit(images, torch.full((16,), -1), names, names), False,
                       "16 random images (give --data FOLDER to check on real ones)")


def model_batches(split: ImageSplit, meta: dict) -> Iterator[torch.Tensor]:
    """Normalized float32 batches in the split's order, preprocessed exactly as in training."""
    for batch in iterate_batches(split, BATCH, channels=meta["channels"], mean=meta["mean"], std=meta["std"]):
        yield batch.images


def torch_to_onnx(model: nn.Module, channels: int, input_size: int, path: Path) -> None:
    """``torch.onnx.export`` (the torch.export-based exporter) with a dynamic batch dimension."""
    example = torch.zeros(2, channels, input_size, input_size)  # batch 2: 1 would be specialized
    batch = torch.export.Dim("batch")
    try:
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamo=True, dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    except ImportError as exc:
        raise ExportError(f"ONNX export needs {exc.name} (pip install 'kdistill[export]')") from None
    except Exception as exc:  # the exporter raises many error types; all mean "cannot export"
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ExportError(f"{type(model).__name__}: torch.onnx.export failed ({reason})") from None


def export_onnx(model: nn.Module, meta: dict, path: Path, checks: CheckImages,
                tolerance: float = FP32_TOLERANCE, threads: int = 1,
                then: Callable[[Path], dict] | None = None) -> dict:
    """Write ``deploy_form(model)`` to ``path`` with the contract in its metadata if ONNX Runtime
    matches ``model`` itself within ``tolerance``: the parity check also verifies the rewrite.

    ``then(checked_file)`` runs before the file replaces ``path`` and its dict joins the report:
    the int8 copy is made there, so when it fails the previous pair of files stays as it was."""
    onnx = require_onnx()

    with atomic_file(path) as tmp:
        torch_to_onnx(deploy_form(model), meta["channels"], meta["input_size"], tmp)
        proto = onnx.load(str(tmp))
        write_contract(proto, contract_from_meta(meta))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        diff = onnx_parity(model, open_session(tmp, threads), checks.split, meta)
        if not diff <= tolerance:  # also catches NaN
            raise ExportError(f"{path}: ONNX Runtime and PyTorch disagree on {checks.source} "
                              f"(max |prob diff| {diff:.2e} > {tolerance:.0e}); nothing written")
        extra = then(tmp) if then else {}
    return {"format": "onnx", "path": str(path), "bytes": path.stat().st_size, "max_prob_diff": diff,
            "tolerance": tolerance, "checked_on": checks.source, "images": len(checks.split), **extra}


def onnx_parity(model: nn.Module, session, split: ImageSplit, meta: dict) -> float:
    """Max absolute difference of softmax probabilities, PyTorch vs ONNX Runtime, over ``split``."""
    worst = 0.0
    for images in model_batches(split, meta):
        with torch.no_grad():
            reference = torch.softmax(model(images).float(), dim=1).numpy()
        worst = max(worst, float(np.abs(session_probs(session, images.numpy()) - reference).max()))
    return worst


def export_int8(fp32_path: Path, int8_path: Path, meta: dict, calibration: CheckImages,
                checks: CheckImages, threads: int = 1) -> dict:
    """Statically quantize the fp32 ONNX model and report its accuracy change on ``checks``."""
    with atomic_file(int8_path) as tmp:
        quantize_int8(fp32_path, tmp, _calibration_batches(calibration.split, meta))
        comparison = compare_sessions(open_session(fp32_path, threads), open_session(tmp, threads), checks, meta)
    return {"path": str(int8_path), "bytes": int8_path.stat().st_size,
            "calibrated_on": f"{len(calibration.split)} images from {calibration.source}", **comparison}


def _calibration_batches(split: ImageSplit, meta: dict) -> list[np.ndarray]:
    return [images.numpy() for images in model_batches(split, meta)]


def quantize_int8(fp32_path: Path, out_path: Path, batches: list[np.ndarray]) -> None:
    """QDQ int8: uint8 activations, int8 weights with per-channel scales (conv filters differ
    widely in range), MinMax calibration."""
    require_onnxruntime()
    onnx = require_onnx()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        # Shape inference and BatchNorm folding first, as ONNX Runtime recommends: a BatchNorm left
        # after a quantized Conv would stay in float and cost a dequantize/quantize pair.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        # uint8 activations x int8 weights is the pairing ONNX Runtime's x86 kernels (VNNI) run
        # fastest; with int8 activations the quantized model is hardly faster than fp32.
        quantize_static(str(prepared), str(out_path), _reader(batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    proto = onnx.load(str(out_path))
    write_contract(proto, {e.key: json.loads(e.value) for e in onnx.load(str(fp32_path)).metadata_props})
    onnx.save(proto, str(out_path))


def _reader(batches: list[np.ndarray]):
    """A ``CalibrationDataReader`` handing out the prepared batches once."""
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    return BatchReader()


def compare_sessions(fp32, int8, checks: CheckImages, meta: dict) -> dict:
    """Decisions and probabilities of the int8 model vs the fp32 one (accuracy when labelled)."""
    probs = {name: [] for name in ("fp32", "int8")}
    temperature = meta.get("temperature") or 1.0  # the threshold was chosen on scaled probabilities
    for images in model_batches(checks.split, meta):
        probs["fp32"].append(session_probs(fp32, images.numpy(), temperature))
        probs["int8"].append(session_probs(int8, images.numpy(), temperature))
    fp32_probs, int8_probs = np.concatenate(probs["fp32"]), np.concatenate(probs["int8"])
    positive = meta.get("positive_class")
    positive_index = meta["classes"].index(positive) if positive is not None else None
    fp32_pred = decide(fp32_probs, positive_index, meta.get("threshold"))
    int8_pred = decide(int8_probs, positive_index, meta.get("threshold"))
    report = {"checked_on": checks.source, "images": len(fp32_pred),
              "agreement": float((fp32_pred == int8_pred).mean()),
              "max_prob_diff": float(np.abs(fp32_probs - int8_probs).max())}
    if checks.labelled:
        labels = checks.split.labels.numpy()
        report["accuracy_fp32"] = float((fp32_pred == labels).mean())
        report["accuracy_int8"] = float((int8_pred == labels).mean())
        report["accuracy_delta"] = report["accuracy_int8"] - report["accuracy_fp32"]
    return report


def export_torchscript(model: nn.Module, meta: dict, path: Path, checks: CheckImages,
                       tolerance: float = FP32_TOLERANCE) -> dict:
    """``torch.jit.trace`` the model (contract stored as ``kdistill.json`` inside) if it matches eager."""
    example = torch.zeros(2, meta["channels"], meta["input_size"], meta["input_size"])
    with atomic_file(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.14 marks torch.jit as deprecated; it still works
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(tmp), _extra_files={"kdistill.json": json.dumps(contract_from_meta(meta))})
        loaded = torch.jit.load(str(tmp))  # our own file, just written: check what users will load
        with torch.no_grad():
            diff = max(float((torch.softmax(loaded(x), 1) - torch.softmax(model(x), 1)).abs().max())
                       for x in model_batches(checks.split, meta))
        if not diff <= tolerance:
            raise ExportError(f"{path}: TorchScript and eager PyTorch disagree on {checks.source} "
                              f"(max |prob diff| {diff:.2e} > {tolerance:.0e}); nothing written")
    return {"format": "torchscript", "path": str(path), "bytes": path.stat().st_size,
            "max_prob_diff": diff, "tolerance": tolerance, "checked_on": checks.source,
            "images": len(checks.split)}


def format_report(report: dict) -> str:
    """The export report as a few readable lines."""
    lines = [f"wrote {report['path']} ({report['format']}, {report['bytes'] / 1e6:.2f} MB)",
             f"  parity vs PyTorch on {report['images']} images ({report['checked_on']}): "
             f"max |prob diff| {report['max_prob_diff']:.1e} <= {report['tolerance']:.0e}"]
    int8 = report.get("int8")
    if int8:
        lines.append(f"wrote {int8['path']} (int8 QDQ, {int8['bytes'] / 1e6:.2f} MB; calibrated on "
                     f"{int8['calibrated_on']})")
        lines.append(f"  int8 vs fp32 on {int8['images']} images: decisions agree "
                     f"{int8['agreement']:.1%}, max |prob diff| {int8['max_prob_diff']:.3f}")
        if "accuracy_delta" in int8:
            lines.append(f"  accuracy fp32 {int8['accuracy_fp32']:.2%} -> int8 {int8['accuracy_int8']:.2%} "
                         f"(change {int8['accuracy_delta'] * 100:+.2f} points)")
        else:
            lines.append("  accuracy change: unknown (check images are unlabelled; give --data FOLDER/<class>/)")
    return "\n".join(lines)
