"""``kdistill export``: ONNX Runtime agrees with PyTorch, the preprocessing contract round-trips,
the batch dimension is dynamic, int8 export reports its accuracy change, TorchScript matches eager,
and bad ONNX files get one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_or_skip  # noqa: E402

require_or_skip("onnxruntime")  # strict under KDISTILL_REQUIRE_EXTRAS=1
import onnx  # noqa: E402

from conftest import leftover_temp_files, make_image_folder  # noqa: E402
from deploy_helpers import CLASSES, make_checkpoint, write_foreign_onnx  # noqa: E402
from kdistill.models.checkpoint import load_checkpoint  # noqa: E402
from kdistill.cli import main  # noqa: E402
from kdistill.data import load_eval_folder  # noqa: E402
from kdistill.data.transforms import to_model_input  # noqa: E402
from kdistill.deploy.export import export_checkpoint  # noqa: E402
from kdistill.deploy.onnx_model import (CONTRACT_KEYS, ExportError, open_session, read_contract,  # noqa: E402
                                session_probs)


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("kdistill: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """FOLDER/<class>/ with 2 x 8 generated 20x20 images (resized to 32 at load time)."""
    return make_image_folder(tmp_path / "data", per_class=8, size=20) / "train"


@pytest.mark.parametrize("name", ["reference_student", "tiny_cnn_d2"])
def test_onnx_matches_pytorch_on_images_at_batch_1_and_5(name, tmp_path, images, capsys):
    """Exported through the CLI, ONNX Runtime's probabilities equal PyTorch's within 1e-4."""
    checkpoint = make_checkpoint(tmp_path / name, name)
    assert main(["export", "--checkpoint", str(checkpoint), "--data", str(images)]) == 0
    assert "max |prob diff|" in capsys.readouterr().out
    model, meta = load_checkpoint(checkpoint)
    session = open_session(checkpoint / "model.onnx")
    split, _ = load_eval_folder(images, CLASSES, 32, 3)
    x = to_model_input(split.images, 3, meta["mean"], meta["std"])
    for batch in (1, 5):
        with torch.no_grad():
            expected = torch.softmax(model(x[:batch]), 1).numpy()
        got = session_probs(session, x[:batch].numpy())
        assert got.shape == (batch, 2)
        assert np.abs(got - expected).max() <= 1e-4


def test_batch_dimension_is_symbolic(tmp_path, images):
    """The graph input declares a named batch dimension, not a fixed 1 or 2."""
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    export_checkpoint(checkpoint, check_images=images)
    shape = onnx.load(str(checkpoint / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert shape[0].dim_param and not shape[0].dim_value
    assert [d.dim_value for d in shape[1:]] == [3, 32, 32]


def test_metadata_round_trips(tmp_path, images):
    """Every contract field is stored as JSON in metadata_props and reads back equal to model.json."""
    checkpoint = make_checkpoint(tmp_path / "ckpt", threshold=0.3)
    export_checkpoint(checkpoint, check_images=images)
    _, meta = load_checkpoint(checkpoint)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(checkpoint / "model.onnx")).metadata_props}
    contract = read_contract(checkpoint / "model.onnx")
    for key in CONTRACT_KEYS:
        assert props[key] == meta[key] == contract[key], key
    assert contract["threshold"] == 0.3 and contract["architecture"] == "reference_student"


@pytest.mark.parametrize("content", [b"not an onnx model at all \x00\xff" * 10, "truncated"])
def test_corrupt_onnx_is_one_line_error(content, tmp_path, images, capsys):
    """Garbage bytes or a truncated export: exit 2, one line naming the file."""
    bad = tmp_path / "bad.onnx"
    if content == "truncated":
        checkpoint = make_checkpoint(tmp_path / "ckpt")
        export_checkpoint(checkpoint, check_images=images)
        content = (checkpoint / "model.onnx").read_bytes()[:300]
    bad.write_bytes(content)
    code = main(["predict", "--checkpoint", str(bad), str(images)])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(bad) in line and ("not a readable ONNX model" in line or "cannot load" in line)


def test_foreign_onnx_is_one_line_error(tmp_path, images, capsys):
    """A valid ONNX model without kdistill's metadata is refused: its preprocessing is unknown."""
    foreign = write_foreign_onnx(tmp_path / "foreign.onnx")
    assert main(["predict", "--checkpoint", str(foreign), str(images)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(foreign) in line and "not exported by kdistill" in line and "input_size" in line


def test_int8_export_reports_accuracy_delta(tmp_path, images, capsys):
    """--int8 writes a QDQ model carrying the same contract and reports the accuracy change."""
    checkpoint = make_checkpoint(tmp_path / "ckpt", "tiny_cnn_d2")
    code = main(["export", "--checkpoint", str(checkpoint), "--int8", "--calibration", str(images)])
    assert code == 0
    out = capsys.readouterr().out
    assert "accuracy fp32" in out and "points)" in out
    int8 = onnx.load(str(checkpoint / "model.int8.onnx"))
    assert "QuantizeLinear" in {node.op_type for node in int8.graph.node}
    assert read_contract(checkpoint / "model.int8.onnx") == read_contract(checkpoint / "model.onnx")
    report = export_checkpoint(checkpoint, int8=True, calibration=images)["int8"]
    assert report["accuracy_delta"] == pytest.approx(report["accuracy_int8"] - report["accuracy_fp32"])
    assert report["images"] == 16 and 0.0 <= report["agreement"] <= 1.0


def test_int8_needs_calibration(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    assert main(["export", "--checkpoint", str(checkpoint), "--int8"]) == 2
    assert "--calibration" in one_error_line(capsys.readouterr().err)
    assert not (checkpoint / "model.onnx").exists()


def test_failed_parity_check_writes_nothing(tmp_path, images):
    """A parity check that fails raises and leaves neither model.onnx nor a temporary file."""
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ExportError, match="disagree"):
        export_checkpoint(checkpoint, check_images=images, tolerance=-1.0)
    assert not (checkpoint / "model.onnx").exists()
    assert leftover_temp_files(checkpoint) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_matches_eager_and_carries_contract(tmp_path, images):
    """The traced model gives eager's outputs at another batch size and embeds kdistill.json."""
    checkpoint = make_checkpoint(tmp_path / "ckpt", "tiny_cnn_d2")
    report = export_checkpoint(checkpoint, "torchscript", check_images=images)
    assert report["max_prob_diff"] <= 1e-4
    extra = {"kdistill.json": ""}
    traced = torch.jit.load(str(checkpoint / "model.torchscript.pt"), _extra_files=extra)
    model, _ = load_checkpoint(checkpoint)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)
    assert json.loads(extra["kdistill.json"])["classes"] == CLASSES


def test_in_memory_splits_as_the_pipeline_passes_them(tmp_path, images):
    """The pipeline's call: calibration and check images given as loaded splits, not folders."""
    checkpoint = make_checkpoint(tmp_path / "distilled")
    split, _ = load_eval_folder(images, CLASSES, 32, 3)
    report = export_checkpoint(checkpoint, "onnx", int8=True, calibration=split, check_images=split)
    assert report["images"] == len(split) == 16 and report["max_prob_diff"] <= 1e-4
    assert "accuracy_delta" in report["int8"]
    assert (checkpoint / "model.onnx").is_file() and (checkpoint / "model.int8.onnx").is_file()


def test_onnx_export_ships_the_deploy_form_checked_against_the_original(tmp_path, images, monkeypatch):
    """The reference student's model.onnx is its deploy form (no BatchNorm, pooling or Gemm), and
    the parity check compares it with the original model: a wrong rewrite is refused."""
    import kdistill.deploy.export
    from kdistill.models import deploy_form

    checkpoint = make_checkpoint(tmp_path / "ckpt")
    report = export_checkpoint(checkpoint, check_images=images)
    assert report["max_prob_diff"] <= 1e-5
    ops = {node.op_type for node in onnx.load(str(checkpoint / "model.onnx")).graph.node}
    assert "ReduceSum" in ops and not ops & {"BatchNormalization", "MaxPool", "Gemm", "MatMul"}

    def wrong_rewrite(model):
        deployed = deploy_form(model)
        with torch.no_grad():
            deployed.conv.bias.add_(0.5)
        return deployed

    monkeypatch.setattr(kdistill.deploy.export, "deploy_form", wrong_rewrite)
    with pytest.raises(ExportError, match="disagree"):
        export_checkpoint(checkpoint, out=tmp_path / "wrong.onnx", check_images=images)
    assert not (tmp_path / "wrong.onnx").exists()


def test_failed_int8_step_leaves_the_previous_pair_untouched(tmp_path, images, monkeypatch, capsys):
    """An int8 export that fails (empty calibration folder, or quantization itself) changes neither
    model.onnx nor model.int8.onnx: the fp32 file only replaces the old one once both passed."""
    import kdistill.deploy.export

    checkpoint = make_checkpoint(tmp_path / "ckpt", "tiny_cnn_d2")
    export_checkpoint(checkpoint, int8=True, calibration=images)
    before = {name: (checkpoint / name).read_bytes() for name in ("model.onnx", "model.int8.onnx")}
    meta = json.loads((checkpoint / "model.json").read_text())
    (checkpoint / "model.json").write_text(json.dumps({**meta, "temperature": 2.0}))  # a new export differs

    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["export", "--checkpoint", str(checkpoint), "--int8", "--calibration", str(empty),
                 "--data", str(images)])
    assert code == 2 and str(empty) in one_error_line(capsys.readouterr().err)

    def broken_quantizer(*args):
        raise ExportError("quantization failed")

    monkeypatch.setattr(kdistill.deploy.export, "quantize_int8", broken_quantizer)
    with pytest.raises(ExportError, match="quantization failed"):
        export_checkpoint(checkpoint, int8=True, calibration=images)
    assert {name: (checkpoint / name).read_bytes() for name in before} == before
    assert leftover_temp_files(checkpoint) == []


def test_unwritable_out_is_one_line_error(tmp_path, images, capsys):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    code = main(["export", "--checkpoint", str(checkpoint), "--out", str(a_file / "model.onnx")])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "cannot write" in line and str(a_file) in line
    assert a_file.read_text() == "not a folder"


def test_out_ending_in_a_separator_is_a_folder(tmp_path, images):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    report = export_checkpoint(checkpoint, out=f"{tmp_path / 'new'}/", check_images=images)
    assert report["path"] == str(tmp_path / "new" / "model.onnx") and Path(report["path"]).is_file()


def test_metadata_that_contradicts_the_graph_is_one_line_error(tmp_path, images, capsys):
    """An input_size in the metadata that the graph does not take is refused before any image is fed."""
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    export_checkpoint(checkpoint, check_images=images)
    proto = onnx.load(str(checkpoint / "model.onnx"))
    for entry in proto.metadata_props:
        if entry.key == "input_size":
            entry.value = "64"
    edited = tmp_path / "edited.onnx"
    onnx.save(proto, str(edited))
    code = main(["predict", "--checkpoint", str(edited), str(images)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and str(edited) in line and "64" in line and "32" in line


def _gray_checkpoint(directory: Path, size: int = 32) -> Path:
    """A 1-channel reference student checkpoint, normalized with the averaged ImageNet mean/std."""
    from kdistill.data.transforms import normalization
    from kdistill.models import build_model
    from kdistill.models.checkpoint import architecture, save_checkpoint

    torch.manual_seed(0)
    model = build_model("reference_student", 2, input_size=size, in_channels=1)
    mean, std = normalization(1)
    meta = {"architecture": architecture("reference_student", 2, size, 1, {}), "classes": CLASSES,
            "positive_class": "PNEUMONIA", "input_size": size, "channels": 1, "mean": list(mean),
            "std": list(std), "threshold": 0.5}
    save_checkpoint(directory, model, meta)
    return directory


def test_one_channel_checkpoint_exports_a_one_channel_graph(tmp_path, images):
    """ONNX metadata and graph input say 1 channel, and int8 calibrates on 1-channel batches."""
    checkpoint = _gray_checkpoint(tmp_path / "gray")
    export_checkpoint(checkpoint, int8=True, calibration=images, check_images=images)  # parity checked inside
    for name in ("model.onnx", "model.int8.onnx"):
        assert read_contract(checkpoint / name)["channels"] == 1
        dims = onnx.load(str(checkpoint / name)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims[1:]] == [1, 32, 32]
