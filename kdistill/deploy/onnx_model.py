"""ONNX files as kdistill writes and reads them: the preprocessing contract stored in the model's
``metadata_props`` (one key per field, JSON values) and ONNX Runtime sessions with a fixed thread
count. ``export.py`` writes these files; ``predict.py`` and ``bench.py`` read them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from kdistill import __version__
from kdistill.errors import KdistillError
from kdistill.eval.calibration import describe_fit
from kdistill.fileio import atomic_file
from kdistill.models.checkpoint import preprocessing_problem

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# The fields a caller needs to feed the model exactly as it was trained (and to read its output).
CONTRACT_KEYS = ("input_size", "channels", "mean", "std", "classes", "positive_class", "threshold")
# Written since calibration exists; files exported before it lack them (temperature 1 then).
OPTIONAL_KEYS = ("temperature", "threshold_rule", "threshold_fitted_on")
PREPROCESSING = ("RGB (or grayscale when channels=1) image resized bilinearly to input_size x "
                 "input_size, float32 pixel/255, then (x - mean) / std per channel, NCHW")


class ExportError(KdistillError):
    """An exported model is unreadable, foreign, or disagrees with the PyTorch model."""


def require_onnxruntime():
    """Import onnxruntime, or say which extra installs it (it is an optional dependency)."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("onnxruntime is not installed (pip install 'kdistill[export]')") from None
    return onnxruntime


def require_onnx():
    """Import onnx, or say which extra installs it."""
    try:
        import onnx
    except ImportError:
        raise ExportError("onnx is not installed (pip install 'kdistill[export]')") from None
    return onnx


def contract_from_meta(meta: dict) -> dict:
    """The preprocessing contract of a checkpoint's ``model.json``, plus provenance fields."""
    contract = {key: meta.get(key) for key in CONTRACT_KEYS}
    contract["temperature"] = meta.get("temperature") or 1.0
    contract["threshold_rule"] = meta.get("threshold_rule")
    contract["threshold_fitted_on"] = describe_fit(meta.get("calibration"))
    contract["architecture"] = meta["architecture"]["name"]
    contract["preprocessing"] = PREPROCESSING
    contract["output"] = (f"{OUTPUT_NAME} [batch, classes]; softmax({OUTPUT_NAME} / temperature) gives "
                          f"class probabilities")
    contract["kdistill_version"] = meta.get("kdistill_version", __version__)
    return contract


def write_contract(model_proto, contract: dict) -> None:
    """Store every contract field as a ``metadata_props`` entry with a JSON value."""
    del model_proto.metadata_props[:]
    for key, value in contract.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)


def update_contract(path: Path, updates: dict) -> None:
    """Replace some contract fields of a kdistill ONNX file (e.g. a threshold refitted on a site's
    images); the graph is untouched and the file is rewritten atomically."""
    read_contract(path)  # a foreign or corrupt file is refused before anything is written
    onnx = require_onnx()
    model_proto = onnx.load(str(path), load_external_data=False)
    contract = {entry.key: json.loads(entry.value) for entry in model_proto.metadata_props}
    write_contract(model_proto, {**contract, **updates})
    with atomic_file(path) as tmp:
        onnx.save(model_proto, str(tmp))


def read_contract(path: Path) -> dict:
    """Read the contract of an ONNX file kdistill exported; a corrupt or foreign file is an error."""
    onnx = require_onnx()
    if not path.is_file():
        raise ExportError(f"{path}: ONNX file not found")
    try:
        model_proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError/RuntimeError variants for torn files
        raise ExportError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    if not model_proto.graph.node:  # protobuf reads an empty file as an empty model
        raise ExportError(f"{path}: not a readable ONNX model (no graph)")
    props = {entry.key: entry.value for entry in model_proto.metadata_props}
    missing = [key for key in CONTRACT_KEYS if key not in props]
    if missing:
        raise ExportError(f"{path}: not exported by kdistill (no preprocessing metadata: "
                          f"missing {', '.join(missing)})")
    try:
        contract = {key: json.loads(value) for key, value in props.items()
                    if key in (*CONTRACT_KEYS, *OPTIONAL_KEYS, "architecture")}
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: unreadable kdistill metadata ({exc})") from None
    problem = preprocessing_problem(contract)
    if problem:
        raise ExportError(f"{path}: kdistill metadata: {problem}")
    _check_input_shape(path, model_proto, contract)
    return contract


def _check_input_shape(path: Path, model_proto, contract: dict) -> None:
    """The metadata must describe the input the graph takes: [batch, channels, size, size]."""
    inputs = model_proto.graph.input
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    expected = [None, contract["channels"], contract["input_size"], contract["input_size"]]
    if len(dims) != 4 or any(d is not None and d != e for d, e in zip(dims[1:], expected[1:])):
        shown = ", ".join("?" if d is None else str(d) for d in dims)
        raise ExportError(f"{path}: the metadata says input [batch, {expected[1]}, {expected[2]}, "
                          f"{expected[3]}] but the graph takes [{shown}]")


def open_session(path: Path, threads: int = 1):
    """An ONNX Runtime CPU session using ``threads`` intra-op threads and one inter-op thread."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = False  # return batch buffers after each run, not keep the peak
    # Idle workers would otherwise spin after every run, taking the cores from whatever runs next:
    # in interleaved timing rounds (kdistill bench) they slow the model timed after this session.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... classes
        raise ExportError(f"{path}: ONNX Runtime cannot load it ({_first_line(exc)})") from None


def session_probs(session, images: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` ``[B, K]`` of a session for a normalized float32 batch
    ``[B, C, S, S]`` (the temperature is the contract's; 1 gives the raw softmax)."""
    logits = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(images, np.float32)})[0]
    return torch.softmax(torch.from_numpy(logits).float() / temperature, dim=1).numpy()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
