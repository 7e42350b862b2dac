"""The commands on one trained checkpoint: ``kdistill evaluate`` (its metrics, size and speed on a
labelled folder) and ``kdistill calibrate`` (its threshold and temperature refitted on a site's
sample, written into model.json and the ONNX files beside it). They join evaluation with the
deploy side (speed, ONNX files), which is why they live here and not in ``eval/``."""

from __future__ import annotations

import shutil
from pathlib import Path

from kdistill import __version__
from kdistill.data import load_eval_folder
from kdistill.data.external import load_labelled_folder
from kdistill.deploy.bench import add_speed
from kdistill.errors import DataError
from kdistill.eval.calibration import describe_fit
from kdistill.eval.evaluate import evaluate_model
from kdistill.eval.site import fit_on_site
from kdistill.fileio import atomic_directory, check_output_file, write_json_atomic
from kdistill.log import log
from kdistill.models.checkpoint import load_checkpoint, update_meta
from kdistill.models.ensemble import model_label


def evaluate_checkpoint(checkpoint: Path, data: Path, out: Path | None, speed: dict | None,
                        on_bad_image: str = "skip") -> dict:
    """``kdistill evaluate``: one checkpoint on one folder; writes ``out`` (results.json).
    ``speed``: the timing settings (``threads``, ...), or None to skip timing (``--no-speed``:
    the speed fields are null)."""
    if out is not None:
        check_output_file(out)
    model, meta = load_checkpoint(checkpoint)
    split, skipped = load_eval_folder(data, meta["classes"], meta["input_size"], meta["channels"],
                                      on_bad_image)
    row, _ = evaluate_model(model, meta, split, name=model_label(meta["architecture"]),
                            role=meta.get("role", "model"), checkpoint=str(checkpoint))
    if speed is None:
        row.update(latency_ms_batch1=None, throughput_img_s=None, speedup_vs_teacher=None)
    else:
        add_speed([row], {row["id"]: (model, meta)}, **speed)
    results = {"kdistill_version": __version__,
               "dataset": {"root": str(data), "evaluated_on": str(data), "classes": meta["classes"],
                           "positive_class": meta.get("positive_class"), "images": len(split),
                           "skipped_files": skipped},
               "models": [row]}
    if out is not None:
        write_json_atomic(out, results)
    return results


def calibrate_checkpoint(checkpoint: Path, folder: Path, *, rule: str = "balanced_accuracy",
                         temperature: bool = True, out: Path | None = None, on_bad_image: str = "skip") -> dict:
    """``kdistill calibrate``: refit a checkpoint's threshold and temperature on a site's labelled
    folder and write them into its ``model.json`` and the ONNX files beside it (in ``out``, a copy
    of the checkpoint, when given). Returns the new calibration entries."""
    model, meta = load_checkpoint(checkpoint)
    if out is not None and out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: --out must be a new or empty folder (it receives a copy of {checkpoint})")
    onnx_files = sorted(checkpoint.glob("*.onnx"))
    _check_onnx_files(onnx_files)  # before anything is written
    site = load_labelled_folder(str(folder), "site", meta["classes"], input_size=meta["input_size"],
                                channels=meta["channels"], on_bad_image=on_bad_image, run_files={},
                                key="--data")
    fitted = fit_on_site(model, meta, site, rule=rule, temperature=temperature)
    target = checkpoint if out is None else _copy_checkpoint(checkpoint, out)
    for path in sorted(target.glob("*.onnx")):
        _update_onnx(path, fitted)
    update_meta(target, fitted)
    log.info(f"{target}: threshold {fitted['threshold']}, temperature {fitted['temperature']:.3f} "
             f"({rule}, fitted on {describe_fit(fitted['calibration'])}); was {meta.get('threshold')}, "
             f"{meta.get('temperature')}")
    return fitted


def _check_onnx_files(paths: list[Path]) -> None:
    if not paths:
        return
    from kdistill.deploy.onnx_model import read_contract  # onnx is an optional extra

    for path in paths:
        read_contract(path)


def _copy_checkpoint(checkpoint: Path, out: Path) -> Path:
    """The checkpoint folder copied to ``out`` (complete, or not at all)."""
    if out.exists():
        out.rmdir()  # empty, checked above
    with atomic_directory(out) as tmp:
        shutil.copytree(checkpoint, tmp, dirs_exist_ok=True)
    return out


def _update_onnx(path: Path, fitted: dict) -> None:
    from kdistill.deploy.onnx_model import update_contract  # onnx is an optional extra

    update_contract(path, {"threshold": fitted["threshold"], "temperature": fitted["temperature"],
                           "threshold_rule": fitted["threshold_rule"],
                           "threshold_fitted_on": describe_fit(fitted["calibration"])})
