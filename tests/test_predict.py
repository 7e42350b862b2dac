"""``kdistill predict``: tables and JSON, the threshold rule, and unreadable files listed, not fatal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import require_or_skip  # noqa: E402

require_or_skip("onnxruntime")  # strict under KDISTILL_REQUIRE_EXTRAS=1

from conftest import make_image_folder  # noqa: E402
from deploy_helpers import make_checkpoint  # noqa: E402
from kdistill.cli import main  # noqa: E402
from kdistill.deploy.export import export_checkpoint  # noqa: E402


@pytest.fixture
def folder_with_corrupt(tmp_path):
    """2 x 4 readable images in nested class folders plus one corrupt .png."""
    root = make_image_folder(tmp_path / "data", per_class=4, size=20) / "train"
    corrupt = root / "NORMAL" / "broken.png"
    corrupt.write_bytes(b"this is not a png")
    return root, corrupt


def test_corrupt_image_is_listed_and_the_rest_predicted(tmp_path, folder_with_corrupt, capsys):
    root, corrupt = folder_with_corrupt
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    assert main(["predict", "--checkpoint", str(checkpoint), str(root)]) == 0
    out = capsys.readouterr().out
    table, _, listed = out.partition("unreadable file(s):")
    predicted = [line.split() for line in table.splitlines() if line.startswith(str(root))]
    assert len(predicted) == 8 and all(row[1] in ("NORMAL", "PNEUMONIA") for row in predicted)
    assert str(corrupt) not in table
    assert str(corrupt) in listed and "cannot read image" in listed
    assert "p(PNEUMONIA)" in table and "threshold" in table


def test_json_output_from_onnx(tmp_path, folder_with_corrupt, capsys):
    """--json from model.onnx: 8 predictions matching the checkpoint's, 1 unreadable with a reason."""
    root, corrupt = folder_with_corrupt
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    export_checkpoint(checkpoint, check_images=root)
    results = {}
    for model in (checkpoint, checkpoint / "model.onnx"):
        assert main(["predict", "--checkpoint", str(model), str(root), "--json"]) == 0
        results[model.name] = json.loads(capsys.readouterr().out)
    onnx_result, torch_result = results["model.onnx"], results["ckpt"]
    assert [u["file"] for u in onnx_result["unreadable"]] == [str(corrupt)]
    assert onnx_result["unreadable"][0]["reason"]
    assert len(onnx_result["predictions"]) == 8
    for a, b in zip(onnx_result["predictions"], torch_result["predictions"]):
        assert a["file"] == b["file"] and a["class"] == b["class"]
        assert abs(a["positive_probability"] - b["positive_probability"]) <= 1e-4
        assert a["threshold"] == 0.5 and set(a) >= {"class", "probability", "positive_probability"}


def test_threshold_from_checkpoint_decides(tmp_path, folder_with_corrupt, capsys):
    """Threshold 0: every image is the positive class, with the probability of that class."""
    root, _ = folder_with_corrupt
    checkpoint = make_checkpoint(tmp_path / "ckpt", threshold=0.0)
    assert main(["predict", "--checkpoint", str(checkpoint), str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert {r["class"] for r in rows} == {"PNEUMONIA"}
    assert all(r["probability"] == r["positive_probability"] and r["threshold"] == 0.0 for r in rows)


def test_missing_path_is_listed_not_fatal(tmp_path, folder_with_corrupt, capsys):
    root, _ = folder_with_corrupt
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    image = next((root / "PNEUMONIA").iterdir())
    missing = tmp_path / "nope.png"
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), str(missing), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [p["file"] for p in result["predictions"]] == [str(image)]
    assert result["unreadable"] == [{"file": str(tmp_path / "nope.png"), "reason": "not found"}]


def test_png_cut_inside_a_chunk_header_is_listed(tmp_path, folder_with_corrupt, capsys):
    """PIL raises SyntaxError (not OSError) for a PNG cut two bytes into a later IDAT chunk's header;
    it is listed as unreadable like any other broken file."""
    import io

    import numpy as np
    from PIL import Image

    root, _ = folder_with_corrupt
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "PNG")  # > 64 KB: several IDAT chunks
    data = buffer.getvalue()
    second_idat = data.find(b"IDAT", data.find(b"IDAT") + 4)
    cut = root / "PNEUMONIA" / "cut.png"
    cut.write_bytes(data[:second_idat + 2])
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    assert main(["predict", "--checkpoint", str(checkpoint), str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["predictions"]) == 8
    assert str(cut) in [u["file"] for u in result["unreadable"]]


def test_nothing_readable_is_an_error(tmp_path, folder_with_corrupt, capsys):
    """When no file at all could be classified the command fails, naming the first reason."""
    _, corrupt = folder_with_corrupt
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    assert main(["predict", "--checkpoint", str(checkpoint), str(corrupt), str(tmp_path / "nope.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none of the 2 file(s)" in err and "Traceback" not in err


def test_one_channel_model_reads_rgb_and_grayscale_files(tmp_path, capsys):
    """A 1-channel checkpoint and its ONNX copy: an RGB file whose channels are equal predicts exactly
    as its grayscale twin; a colour file is read as its luma, not refused."""
    import numpy as np
    from PIL import Image

    from kdistill.data.transforms import normalization
    from kdistill.models import build_model
    from kdistill.models.checkpoint import architecture, save_checkpoint

    import torch

    torch.manual_seed(0)
    mean, std = normalization(1)
    checkpoint = tmp_path / "gray"
    save_checkpoint(checkpoint, build_model("reference_student", 2, input_size=24, in_channels=1),
                    {"architecture": architecture("reference_student", 2, 24, 1, {}),
                     "classes": ["NORMAL", "PNEUMONIA"], "positive_class": "PNEUMONIA", "input_size": 24,
                     "channels": 1, "mean": list(mean), "std": list(std), "threshold": 0.5})
    pixels = np.random.default_rng(0).integers(0, 256, (24, 24), dtype=np.uint8)
    files = {"gray": tmp_path / "gray.png", "rgb": tmp_path / "rgb.png", "colour": tmp_path / "colour.png"}
    Image.fromarray(pixels, mode="L").save(files["gray"])
    Image.fromarray(np.stack([pixels] * 3, -1), mode="RGB").save(files["rgb"])
    Image.fromarray(np.stack([pixels, pixels[::-1], pixels.T], -1), mode="RGB").save(files["colour"])
    export_checkpoint(checkpoint, check_images=make_image_folder(tmp_path / "data", per_class=4) / "train")
    for model in (checkpoint, checkpoint / "model.onnx"):
        assert main(["predict", "--checkpoint", str(model), *map(str, files.values()), "--json"]) == 0
        rows = {Path(r["file"]).stem: r for r in json.loads(capsys.readouterr().out)["predictions"]}
        assert set(rows) == {"gray", "rgb", "colour"}
        assert rows["rgb"]["positive_probability"] == rows["gray"]["positive_probability"]
        assert rows["colour"]["positive_probability"] != rows["gray"]["positive_probability"]


def test_the_table_rounds_the_threshold_and_json_keeps_it(tmp_path, folder_with_corrupt, capsys):
    root, _ = folder_with_corrupt
    checkpoint = make_checkpoint(tmp_path / "ckpt", threshold=0.123456789012345)
    assert main(["predict", "--checkpoint", str(checkpoint), str(root)]) == 0
    table = capsys.readouterr().out
    assert " 0.1235" in table and "0.12345" not in table
    assert main(["predict", "--checkpoint", str(checkpoint), str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["threshold"] == 0.123456789012345
