"""External test sets (``data.external``) and site calibration (``calibration.site``,
``kdistill calibrate``): evaluated or fitted on their own images, copies of the run's images left
out, recorded in checkpoints, ONNX metadata and reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, make_image_folder, require_or_skip, tiny_config, write_config
from kdistill.cli import main
from kdistill.config import load_config
from kdistill.errors import DataError
from kdistill.pipeline import run


def site_folder(root: Path, *, bases=(110, 150), per_class: int = 30, size: int = 16, seed: int = 7) -> Path:
    """``root/<class>/`` images whose two classes sit closer than training's (70 and 180): another
    site's exposure, on which a validation-fitted threshold is off."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(bases[label] + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"site-{i:03d}.png")
    return root


@pytest.fixture
def external_folder(tmp_path, image_root) -> Path:
    """An external set in a dataset root's ``test/``, plus one byte-identical copy of a train image."""
    root = make_image_folder(tmp_path / "ext", per_class=10, splits=("test",), seed=3)
    first = sorted((image_root / "train" / "NORMAL").iterdir())[0]
    shutil.copy(first, root / "test" / "NORMAL" / "copied.png")
    return root


@pytest.mark.slow
def test_external_sets_get_their_own_rows_tests_and_report_section(tmp_path, image_root, external_folder):
    config = tiny_config(image_root, tmp_path / "run", data={"external": [str(external_folder)]},
                         seeds=[0, 1], robustness={"battery": False})
    results = run(load_config(write_config(tmp_path / "c.yaml", config)))
    (external,) = results["external"]
    assert external["name"] == "ext" and external["images"] == 20  # the copy was left out
    assert [c["path"].endswith("copied.png") for c in external["copies_of_run_images"]] == [True]
    assert [row["id"] for row in external["models"]] == [row["id"] for row in results["models"]]
    assert all(row["images"] == 20 for row in external["models"])
    assert {t["seed"] for t in external["paired_tests"]} == {0, 1}
    assert external["pooled_tests"] and len(external["predictions"]["labels"]) == 20
    assert external["summary"]["baseline"]["accuracy"]["n"] == 2
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "## External test set: ext" in markdown and "1 byte-identical copies" in markdown
    assert "External test set: ext" in (tmp_path / "run" / "report.html").read_text()


def test_an_external_folder_with_other_classes_is_refused_before_anything_is_written(tmp_path, image_root):
    wrong = tmp_path / "wrong"
    for name in ("CAT", "DOG"):
        (wrong / name).mkdir(parents=True)
    config = tiny_config(image_root, tmp_path / "run", data={"external": [str(wrong)]})
    with pytest.raises(DataError, match=r"data.external\[0\].*differ from the run's classes"):
        run(load_config(write_config(tmp_path / "c.yaml", config)))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_run_fits_thresholds_on_the_site_sample_and_records_its_files(tmp_path, image_root):
    site = site_folder(tmp_path / "site")
    config = tiny_config(image_root, tmp_path / "run", calibration={"site": str(site)},
                         robustness={"battery": False}, export=False)
    results = run(load_config(write_config(tmp_path / "c.yaml", config)))
    assert results["dataset"]["site"]["images"] == 60
    for row in results["models"]:
        meta = json.loads((Path(row["checkpoint"]) / "model.json").read_text())
        record = meta["calibration"]
        assert record["fitted_on"] == "site" and record["images"] == 60 and len(record["files"]) == 60
        assert record["replaced"]["calibration"]["fitted_on"] == "val"
        assert row["threshold"] == meta["threshold"] and "site sample" in row["threshold_fitted_on"]
    assert "site sample" in (tmp_path / "run" / "report.md").read_text()


@pytest.fixture
def trained_with_onnx(tmp_path_factory) -> Path:
    """A tiny run's distilled student with its ONNX files."""
    require_or_skip("onnxruntime")
    base = tmp_path_factory.mktemp("trained")
    root = make_image_folder(base / "data")
    config = tiny_config(root, base / "run", robustness={"battery": False})
    run(load_config(write_config(base / "c.yaml", config)))
    return base / "run" / "distilled"


@pytest.mark.slow
def test_calibrate_updates_model_json_and_every_onnx_file_and_predict_follows(tmp_path, trained_with_onnx, capsys):
    from kdistill.deploy.onnx_model import read_contract

    site = site_folder(tmp_path / "site")
    before = json.loads((trained_with_onnx / "model.json").read_text())
    assert main(["calibrate", "--checkpoint", str(trained_with_onnx), "--data", str(site)]) == 0
    after = json.loads((trained_with_onnx / "model.json").read_text())
    assert after["calibration"]["fitted_on"] == "site"
    assert after["calibration"]["replaced"]["threshold"] == before["threshold"]
    assert after["threshold"] != before["threshold"]
    onnx_files = sorted(trained_with_onnx.glob("*.onnx"))
    assert len(onnx_files) == 2
    for path in onnx_files:
        contract = read_contract(path)
        assert contract["threshold"] == after["threshold"] and contract["temperature"] == after["temperature"]
        assert "site sample" in contract["threshold_fitted_on"]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(onnx_files[0]), str(site), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert all(row["threshold"] == pytest.approx(after["threshold"]) for row in rows)


@pytest.mark.slow
def test_calibrate_with_out_leaves_the_checkpoint_alone_and_refuses_a_full_folder(tmp_path, trained_with_onnx, capsys):
    site = site_folder(tmp_path / "site")
    original = {p.name: p.read_bytes() for p in trained_with_onnx.iterdir()}
    copy = tmp_path / "calibrated"
    assert main(["calibrate", "--checkpoint", str(trained_with_onnx), "--data", str(site), "--out", str(copy)]) == 0
    assert {p.name: p.read_bytes() for p in trained_with_onnx.iterdir()} == original
    assert json.loads((copy / "model.json").read_text())["calibration"]["fitted_on"] == "site"
    assert sorted(p.name for p in copy.iterdir()) == sorted(original)
    capsys.readouterr()
    assert main(["calibrate", "--checkpoint", str(trained_with_onnx), "--data", str(site), "--out", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must be a new or empty folder" in err


@pytest.mark.slow
def test_site_calibration_on_a_folder_of_one_class_is_refused(tmp_path, trained_with_onnx, capsys):
    site = site_folder(tmp_path / "site")
    shutil.rmtree(site / "PNEUMONIA")
    assert main(["calibrate", "--checkpoint", str(trained_with_onnx), "--data", str(site)]) == 2
    assert "class folder" in capsys.readouterr().err
