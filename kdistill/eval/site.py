"""Site calibration: the decision threshold and temperature refitted on a small labelled sample
from the site where a model will run.

A threshold fitted on validation carved from the training folder sits among that folder's
borderline images; at another hospital the scores move (other scanners, exposure, framing, case
mix) and the same cut can cost several points of accuracy. The model's ranking of images (its
AUC) often survives the move far better than its cut does, so refitting two numbers on 50-200 of
the site's own labelled images recovers much of what the move cost, without retraining.

Nothing else changes: weights, epochs and the robustness record stay as validation chose them.
The record in ``model.json`` names the folder, its class counts and every file used, and keeps the
validation-fitted values it replaced.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from kdistill.data.external import LabelledFolder, load_labelled_folder
from kdistill.errors import ConfigError, DataError
from kdistill.eval.calibration import calibrate, describe_fit
from kdistill.eval.inference import predict_logits
from kdistill.fileio import atomic_directory
from kdistill.log import log
from kdistill.models.checkpoint import load_checkpoint, update_meta

SITE_RULES = ("balanced_accuracy", "youden")
SMALL_SAMPLE = 50  # fewer images than this (or fewer than SMALL_CLASS of a class) gets a warning
SMALL_CLASS = 10


def fit_on_site(model: nn.Module, meta: dict, site: LabelledFolder, *, rule: str, temperature: bool) -> dict:
    """Temperature and threshold fitted on the site's sample: the ``model.json`` entries, with a
    ``calibration`` record of the images used and the values they replace."""
    if rule not in SITE_RULES:
        raise ConfigError(f"site calibration rule {rule!r}: choose one of {', '.join(SITE_RULES)}")
    classes, positive = meta["classes"], meta.get("positive_class")
    positive_index = classes.index(positive) if positive is not None else None
    logits = predict_logits(model, site.split, channels=meta["channels"], mean=meta["mean"], std=meta["std"])
    fitted = calibrate(logits, site.split.labels.numpy(), positive_index, rule=rule, temperature=temperature)
    counts = site.split.class_counts(len(classes))
    fitted["calibration"] = {**fitted["calibration"], "fitted_on": "site", "folder": site.folder,
                             "class_counts": dict(zip(classes, counts)), "files": site.split.names,
                             "replaced": {key: meta.get(key) for key in ("threshold", "temperature", "threshold_rule")}
                             | {"calibration": meta.get("calibration")}}
    _warn_if_small(site, classes, counts)
    return fitted


def _warn_if_small(site: LabelledFolder, classes: list[str], counts: list[int]) -> None:
    if len(site.split) < SMALL_SAMPLE or min(counts) < SMALL_CLASS:
        shown = ", ".join(f"{name} {n}" for name, n in zip(classes, counts))
        log.info(f"warning: site calibration on {len(site.split)} images ({shown}) from {site.folder}: "
                 f"under {SMALL_SAMPLE} images or {SMALL_CLASS} of a class, the threshold is a rough guess")


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
