"""``kdistill threshold-study RUN_DIR``: how far each threshold rule's cut lands from the best cut
in hindsight on a finished run's test split, for every model of the run.

A study of rules, meant for a run whose test split is a held-out source (``data.test_match``) or
another site: it reads the test labels to find the best threshold, so it judges the *rule* for
later runs and selects nothing for this one. Each model is reloaded from its checkpoint; its
validation logits (and, for the ``battery`` rule, its validation renderings under the shift
battery) give each rule's threshold exactly as training would have fitted it, and the test logits
give balanced accuracy at that threshold and at the best one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import yaml

from kdistill.config import from_dict
from kdistill.data import DatasetBundle, load_dataset
from kdistill.data.cache import resolve_cache_dir
from kdistill.errors import DataError
from kdistill.eval.calibration import THRESHOLD_RULES, calibrate, positive_fraction, scaled_probs
from kdistill.eval.inference import predict_logits
from kdistill.eval.robustness import Battery, battery_logits
from kdistill.log import log
from kdistill.models.checkpoint import load_checkpoint
from kdistill.pipeline import fast_frozen_teacher


def study_run(run_dir: Path) -> dict:
    """Per model of the run: each rule's threshold and test balanced accuracy, and the best cut's."""
    config = _saved_config(run_dir)
    data = load_dataset(**dataclasses.asdict(config.data))
    if data.positive_index is None:
        raise DataError(f"{run_dir}: threshold rules apply to two classes; this run has {len(data.classes)}")
    battery = Battery(data.val, config.robustness.seed, resolve_cache_dir(config.data.cache_dir))
    models = []
    for checkpoint in _checkpoints(run_dir, config.teacher.checkpoint):
        model, meta = load_checkpoint(checkpoint)
        log.info(f"threshold study: {checkpoint}")
        if meta.get("role") == "teacher":
            model = fast_frozen_teacher(model, meta, config)
        shown = checkpoint.relative_to(run_dir) if checkpoint.is_relative_to(run_dir) else checkpoint
        models.append({"checkpoint": str(shown), "role": meta.get("role"),
                       "seed": meta.get("seed"), **_study_model(model, meta, data, battery, config)})
    return {"run": str(run_dir), "test": data.info.get("sources", {}).get("test"), "images": len(data.test),
            "rules": list(THRESHOLD_RULES), "models": models}


def _saved_config(run_dir: Path):
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise DataError(f"{path}: not found; give the output folder of a finished kdistill run")
    return from_dict(yaml.safe_load(path.read_text()))


def _checkpoints(run_dir: Path, teacher_checkpoint: str | None) -> list[Path]:
    """The run's checkpoints, and the teacher it loaded (``teacher.checkpoint``) when that lives elsewhere."""
    found = sorted(path.parent for path in run_dir.rglob("model.json") if "resume" not in path.parts)
    if teacher_checkpoint and Path(teacher_checkpoint).resolve() not in {p.resolve() for p in found}:
        found.insert(0, Path(teacher_checkpoint))
    if not found:
        raise DataError(f"{run_dir}: no checkpoints found")
    return found


def _study_model(model, meta: dict, data: DatasetBundle, battery: Battery, config) -> dict:
    positive = data.positive_index
    val_logits = predict_logits(model, data.val, channels=meta["channels"], mean=meta["mean"], std=meta["std"])
    shifted = list(battery_logits(model, meta, battery).values())
    test_logits = predict_logits(model, data.test, channels=meta["channels"], mean=meta["mean"], std=meta["std"])
    prior = positive_fraction(data.train.labels.numpy(), positive)
    test_labels = data.test.labels.numpy() == positive
    rules = {}
    for rule in THRESHOLD_RULES:
        fitted = calibrate(val_logits, data.val.labels.numpy(), positive, rule=rule,
                           temperature=config.calibration.temperature, train_positive_fraction=prior,
                           shifted_logits=shifted)
        scores = scaled_probs(test_logits, fitted["temperature"])[:, positive]
        rules[rule] = {"threshold": fitted["threshold"],
                       "balanced_accuracy": balanced_accuracy(scores, test_labels, fitted["threshold"])}
    temperature = calibrate(val_logits, data.val.labels.numpy(), positive, rule="argmax",
                            temperature=config.calibration.temperature)["temperature"]
    best_threshold, best = best_in_hindsight(scaled_probs(test_logits, temperature)[:, positive], test_labels)
    return {"rules": rules, "best": {"threshold": best_threshold, "balanced_accuracy": best}}


def balanced_accuracy(scores: np.ndarray, positives: np.ndarray, threshold: float) -> float:
    called = scores >= threshold
    return float((called[positives].mean() + (~called[~positives]).mean()) / 2)


def best_in_hindsight(scores: np.ndarray, positives: np.ndarray) -> tuple[float, float]:
    """The cut on ``scores`` with the highest balanced accuracy on these very labels, and that value."""
    candidates = np.unique(np.concatenate([scores, [np.inf]]))
    values = [balanced_accuracy(scores, positives, t) for t in candidates]
    best = int(np.argmax(values))
    return float(candidates[best]), float(values[best])


def format_study(study: dict) -> str:
    """A Markdown table: per model, balanced accuracy at each rule's threshold (and the threshold),
    the best in hindsight, then the mean gap of each rule over the models."""
    rules = study["rules"]
    lines = [f"Threshold rules on {study['test']} ({study['images']} images): balanced accuracy % at each "
             "rule's threshold (threshold in brackets) against the best threshold in hindsight.", "",
             "| model | " + " | ".join(rules) + " | best in hindsight |", "|" + "---|" * (len(rules) + 2)]
    for entry in study["models"]:
        cells = [f"{100 * entry['rules'][r]['balanced_accuracy']:.2f} ({entry['rules'][r]['threshold']:.3f})"
                 for r in rules]
        best = entry["best"]
        lines.append(f"| {entry['checkpoint']} | " + " | ".join(cells)
                     + f" | {100 * best['balanced_accuracy']:.2f} ({best['threshold']:.3f}) |")
    gaps = {r: [100 * (e["best"]["balanced_accuracy"] - e["rules"][r]["balanced_accuracy"]) for e in study["models"]]
            for r in rules}
    lines.append("| mean gap to the best (points) | " + " | ".join(f"{np.mean(g):.2f}" for g in gaps.values()) + " | |")
    lines.append("| largest gap (points) | " + " | ".join(f"{np.max(g):.2f}" for g in gaps.values()) + " | |")
    return "\n".join(lines)
