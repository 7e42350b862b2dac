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


from torch import nn

from kdistill.data.external import LabelledFolder
from kdistill.errors import ConfigError
from kdistill.eval.calibration import calibrate
from kdistill.eval.inference import predict_logits
from kdistill.log import log

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
