"""``kdistill threshold-study RUN_DIR``: how far each threshold rule's cut lands from the best cut
in hindsight on a finished run's test split, for every model of the run.

A study of rules, meant for a run whose test split is a held-out source (``data.test_match``) or
another site: it reads the test labels to find the best threshold, so it judges the *rule* for
later runs and selects nothing for this one. Each model is reloaded from its checkpoint; its
validation logits (and, for the ``battery`` rule, its validation renderings under the shift
battery) give each rule's threshold exactly as training would have fitted it, and the test logits
give balanced accuracy at that threshold and at the best one.

It also measures site calibration (``kdistill calibrate``): the test split is cut in two by patient,
a calibration half and a test half; samples of 50, 100 and 200 images drawn (by patient) from the
calibration half refit the temperature and threshold, and the test half scores them against the
validation-fitted threshold and the test half's best in hindsight.
"""

from __future__ import annotations

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

SITE_SIZES = (50, 100, 200)  # labelled images a site might spare
SITE_DRAWS = 20  # samples per size: the spread says how much luck a small sample carries
SITE_SEED = 0


def study_run(run_dir: Path) -> dict:
    """Per model of the run: each rule's threshold and test balanced accuracy, and the best cut's."""
    config = _saved_config(run_dir)
    data = load_dataset(config.data)
    if data.positive_index is None:
        raise DataError(f"{run_dir}: threshold rules apply to two classes; this run has {len(data.classes)}")
    battery = Battery(data.val, config.robustness.seed, resolve_cache_dir(config.data.cache_dir))
    halves = site_halves(data.test.groups, SITE_SEED)
    models = []
    for checkpoint in _checkpoints(run_dir, config.teacher.checkpoint):
        model, meta = load_checkpoint(checkpoint)
        log.info(f"threshold study: {checkpoint}")
        if meta.get("role") == "teacher":
            model = fast_frozen_teacher(model, meta, config)
        shown = checkpoint.relative_to(run_dir) if checkpoint.is_relative_to(run_dir) else checkpoint
        models.append({"checkpoint": str(shown), "role": meta.get("role"),
                       "seed": meta.get("seed"), **_study_model(model, meta, data, battery, config, halves)})
    return {"run": str(run_dir), "test": data.info.get("sources", {}).get("test"), "images": len(data.test),
            "rules": list(THRESHOLD_RULES), "shipped_rule": config.calibration.threshold_rule,
            "site_rule": config.calibration.site_rule,
            "site_halves": {"calibration": len(halves[0]), "test": len(halves[1])}, "models": models}


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


def _study_model(model, meta: dict, data: DatasetBundle, battery: Battery, config,
                 halves: tuple[np.ndarray, np.ndarray]) -> dict:
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
    shipped = rules[config.calibration.threshold_rule]["threshold"]
    site = site_calibration(test_logits.numpy(), data.test.labels.numpy(), positive, data.test.groups, halves,
                            validation=(temperature, shipped), rule=config.calibration.site_rule,
                            fit_temperature=config.calibration.temperature)
    return {"rules": rules, "best": {"threshold": best_threshold, "balanced_accuracy": best}, "site": site}


def site_halves(groups: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image indices of a calibration half and a test half, split by patient (no patient in both)."""
    patients = np.array(sorted(set(groups)))
    np.random.default_rng(seed).shuffle(patients)
    calibration = set(patients[: len(patients) // 2])
    in_calibration = np.array([g in calibration for g in groups])
    return np.flatnonzero(in_calibration), np.flatnonzero(~in_calibration)


def draw_site_sample(pool: np.ndarray, groups: list[str], size: int, rng: np.random.Generator) -> np.ndarray:
    """About ``size`` images of whole patients drawn at random from ``pool`` (stops at the first
    patient that reaches the size)."""
    by_patient: dict[str, list[int]] = {}
    for index in pool:
        by_patient.setdefault(groups[index], []).append(int(index))
    order = list(by_patient)
    rng.shuffle(order)
    chosen: list[int] = []
    for patient in order:
        if len(chosen) >= size:
            break
        chosen.extend(by_patient[patient])
    return np.array(chosen)


def site_calibration(logits: np.ndarray, labels: np.ndarray, positive: int, groups: list[str],
                     halves: tuple[np.ndarray, np.ndarray], *, validation: tuple[float, float], rule: str,
                     fit_temperature: bool) -> dict:
    """Test-half balanced accuracy at the validation-fitted threshold, after site calibration on
    samples of each size from the calibration half (mean and spread over draws), and at the test
    half's best threshold in hindsight."""
    pool, test = halves
    positives = labels == positive

    def test_scores(temperature: float) -> np.ndarray:
        return scaled_probs(logits[test], temperature)[:, positive]

    result = {"validation": balanced_accuracy(test_scores(validation[0]), positives[test], validation[1]),
              "best": best_in_hindsight(test_scores(validation[0]), positives[test])[1], "sizes": {}}
    rng = np.random.default_rng(SITE_SEED)
    for size in SITE_SIZES:
        if size >= len(pool):  # a sample of the whole pool would not vary
            continue
        scores = []
        for _ in range(SITE_DRAWS):
            sample = draw_site_sample(pool, groups, size, rng)
            fitted = calibrate(logits[sample], labels[sample], positive, rule=rule, temperature=fit_temperature)
            scores.append(balanced_accuracy(test_scores(fitted["temperature"]), positives[test], fitted["threshold"]))
        result["sizes"][size] = {"mean": float(np.mean(scores)), "sd": float(np.std(scores)),
                                 "worst": float(np.min(scores))}
    return result


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
    return "\n".join(lines + [""] + format_site(study))


def format_site(study: dict) -> list[str]:
    """Site calibration's table: test-half balanced accuracy % per model and sample size."""
    sizes = sorted({int(n) for e in study["models"] for n in e["site"]["sizes"]})
    halves = study["site_halves"]
    lines = [f"Site calibration ({study['site_rule']} rule, temperature refitted): the test split cut by "
             f"patient into a calibration half ({halves['calibration']} images) and a test half "
             f"({halves['test']}); balanced accuracy % on the test half at the validation-fitted "
             f"`{study['shipped_rule']}` threshold, after refitting on n images of the calibration half "
             f"(mean ± sd over {SITE_DRAWS} draws, worst draw in brackets), and at the best threshold in hindsight.",
             "", "| model | validation threshold | " + " | ".join(f"site, n = {n}" for n in sizes)
             + " | best in hindsight |", "|" + "---|" * (len(sizes) + 3)]
    for entry in study["models"]:
        site = entry["site"]
        cells = []
        for n in sizes:
            fit = site["sizes"].get(n) or site["sizes"].get(str(n))
            cells.append("-" if fit is None else
                         f"{100 * fit['mean']:.2f} ± {100 * fit['sd']:.2f} ({100 * fit['worst']:.2f})")
        lines.append(f"| {entry['checkpoint']} | {100 * site['validation']:.2f} | " + " | ".join(cells)
                     + f" | {100 * site['best']:.2f} |")
    return lines
