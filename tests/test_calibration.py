"""Temperature scaling and the decision threshold: fitted correctly, fitted on the VALIDATION split
only, stored in model.json, and applied wherever a checkpoint's probabilities are produced."""

from __future__ import annotations

import dataclasses
import json
import typing

import numpy as np
import pytest
import torch

import kdistill.eval.calibration as calibration
from conftest import make_image_folder, require_or_skip, tiny_config, write_config
from deploy_helpers import make_checkpoint
from kdistill.eval.calibration import (THRESHOLD_RULES, calibrate, choose_threshold, fit_temperature,
                                       positive_fraction, scaled_probs)
from kdistill.models.checkpoint import load_checkpoint, update_meta
from kdistill.cli import main
from kdistill.config import CalibrationConfig, from_dict
from kdistill.data import load_dataset
from kdistill.eval.evaluate import score_logits
from kdistill.eval.metrics import expected_calibration_error
from kdistill.pipeline import fit_calibration


def overconfident_logits(n: int = 20000, factor: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z) (so z is calibrated) and logits ``factor * z`` (overconfident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 3))
    p = scaled_probs(z)
    labels = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)
    return factor * z, labels


def test_temperature_recovers_the_overconfidence_factor():
    logits, labels = overconfident_logits()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.08)
    before = expected_calibration_error(scaled_probs(logits), labels)
    after = expected_calibration_error(scaled_probs(logits, t), labels)
    assert after < before / 3


def test_temperature_keeps_decisions_and_stays_one_when_calibrated():
    logits, labels = overconfident_logits(factor=1.0)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.08)
    t = fit_temperature(logits * 3, labels)
    assert (scaled_probs(logits * 3, t).argmax(1) == logits.argmax(1)).all()


def test_temperature_stays_one_when_validation_is_perfectly_separated():
    """Separable validation: NLL keeps falling as T -> 0, so the fit would hit its bound and make
    every later mistake certain; T stays 1 instead."""
    logits = np.array([[2.0, -2.0], [1.5, -1.0], [-1.0, 1.2], [-2.0, 3.0]])
    labels = np.array([0, 0, 1, 1])
    assert fit_temperature(logits, labels) == 1.0


def test_threshold_tie_goes_to_sensitivity_and_rules_differ_only_by_the_midpoint():
    """Val scores: positives 0.9 0.8 0.35, negatives 0.6 0.3 0.1. Calling >= 0.8 positive gives
    sens 2/3 spec 1; >= 0.35 gives sens 1 spec 2/3: the same J. The more sensitive one wins;
    youden returns 0.35 itself, balanced_accuracy the midpoint to the next lower score 0.3."""
    scores = np.array([0.9, 0.8, 0.35, 0.6, 0.3, 0.1])
    positives = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    assert choose_threshold(scores, positives, "youden") == pytest.approx(0.35)
    assert choose_threshold(scores, positives, "balanced_accuracy") == pytest.approx(0.325)
    assert choose_threshold(scores, np.ones(6, bool)) is None
    with pytest.raises(ValueError, match="threshold rule"):
        choose_threshold(scores, positives, "f1")


def test_prior_rule_is_the_training_positive_share_and_argmax_is_half():
    """Training labels 30 NORMAL, 90 PNEUMONIA, 10 unlabelled (-1, left out): prior = 90/120 = 0.75,
    whatever validation says; argmax = 0.5. Neither needs both classes in validation."""
    train = np.array([0] * 30 + [1] * 90 + [-1] * 10)
    assert positive_fraction(train, 1) == pytest.approx(0.75)
    assert positive_fraction(train, 0) == pytest.approx(0.25)
    scores = np.array([0.9, 0.8, 0.35, 0.6, 0.3, 0.1])
    positives = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    assert choose_threshold(scores, positives, "prior", train_positive_fraction=0.75) == 0.75
    assert choose_threshold(scores, positives, "argmax") == 0.5
    assert choose_threshold(scores, np.ones(6, bool), "prior", train_positive_fraction=0.75) == 0.75
    assert choose_threshold(scores, np.ones(6, bool), "argmax") == 0.5
    with pytest.raises(ValueError, match="'prior' needs the training labels"):
        choose_threshold(scores, positives, "prior")
    with pytest.raises(ValueError, match="one class only"):
        choose_threshold(scores, positives, "prior", train_positive_fraction=1.0)
    with pytest.raises(ValueError, match="no labelled images"):
        positive_fraction(np.array([-1, -1]), 1)


def test_calibrate_prior_stores_the_threshold_and_its_source():
    logits, labels = overconfident_logits(n=500)
    binary_logits, binary_labels = logits[:, :2], (labels == 1).astype(int)
    fitted = calibrate(binary_logits, binary_labels, 1, rule="prior", train_positive_fraction=0.2)
    assert fitted["threshold"] == 0.2 and fitted["threshold_rule"] == "prior"
    assert fitted["calibration"]["train_positive_fraction"] == 0.2
    argmax = calibrate(binary_logits, binary_labels, 1, rule="argmax")
    assert argmax["threshold"] == 0.5 and argmax["threshold_rule"] == "argmax"
    assert argmax["temperature"] == fitted["temperature"]  # the rule never moves the temperature


def test_config_rules_match_the_calibration_rules():
    """The config's allowed rules are THRESHOLD_RULES (a rule in one only would be refused by the other)."""
    hint = typing.get_type_hints(CalibrationConfig)["threshold_rule"]
    assert set(typing.get_args(hint)) == set(THRESHOLD_RULES)


def test_threshold_maximizes_validation_balanced_accuracy():
    """Brute force over every possible cut: no threshold beats the chosen one on validation."""
    rng = np.random.default_rng(1)
    positives = rng.random(200) < 0.7
    scores = np.clip(0.2 * positives + rng.normal(0.5, 0.15, 200), 0, 1)

    def balanced(t):
        called = scores >= t
        return (called[positives].mean() + (~called[~positives]).mean()) / 2

    best = max(balanced(t) for t in np.append(scores, 1.1))
    for rule in ("balanced_accuracy", "youden"):
        assert balanced(choose_threshold(scores, positives, rule)) == pytest.approx(best)


def test_calibrate_multiclass_has_no_threshold_and_one_class_val_keeps_half():
    logits, labels = overconfident_logits(n=500)
    fitted = calibrate(logits, labels, None)
    assert fitted["threshold"] is None and fitted["threshold_rule"] is None and fitted["temperature"] > 1
    binary = calibrate(np.array([[0.0, 1.0], [0.0, 2.0]]), np.array([1, 1]), 1)
    assert binary["threshold"] == 0.5 and binary["calibration"]["fitted_on"] == "val"
    assert calibrate(logits, labels, None, temperature=False)["temperature"] == 1.0


class _Poisoned:
    """Stands in for the test split: touching it in any way fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"calibration read the test split (.{name})")

    def __len__(self):
        raise AssertionError("calibration read the test split (len)")


def test_pipeline_calibration_never_touches_the_test_split(image_root):
    config = from_dict(tiny_config(image_root, image_root / "unused"))
    data = load_dataset(config.data)
    model, meta = load_checkpoint(make_checkpoint(image_root / "ckpt", size=16))
    clean = fit_calibration(model, meta, data, config)
    poisoned = fit_calibration(model, meta, dataclasses.replace(data, test=_Poisoned()), config)
    assert poisoned == clean and clean["calibration"]["images"] == len(data.val)


def test_pipeline_prior_rule_reads_the_training_labels(image_root):
    """fit_calibration with rule prior on unbalanced data (12 NORMAL, 24 PNEUMONIA): the threshold is
    the PNEUMONIA share of the training split's labels, far from 0.5, whatever the model says."""
    for path in sorted((image_root / "train" / "NORMAL").iterdir())[12:]:
        path.unlink()
    config = from_dict(tiny_config(image_root, image_root / "unused", calibration={"threshold_rule": "prior"}))
    data = load_dataset(config.data)
    train = data.train.labels.numpy()
    share = float((train == data.positive_index).sum()) / len(train)
    assert abs(share - 0.5) > 0.15  # so a 0.5 or a validation-fitted threshold could not pass
    model, meta = load_checkpoint(make_checkpoint(image_root / "ckpt", size=16))
    fitted = fit_calibration(model, meta, data, config)
    assert fitted["threshold"] == pytest.approx(share) and fitted["threshold_rule"] == "prior"
    assert fitted["calibration"]["train_positive_fraction"] == pytest.approx(share)


@pytest.fixture(scope="module")
def spied_run(tmp_path_factory):
    """A 2-seed `kdistill run` with the two fitting functions wrapped to record what they see."""
    base = tmp_path_factory.mktemp("spied")
    root = make_image_folder(base / "data")
    config = write_config(base / "config.yaml", tiny_config(root, base / "out", seeds=[0, 1], export=False))
    seen = {"temperature": [], "threshold": []}
    fit_t, choose = calibration.fit_temperature, calibration.choose_threshold
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibration, "fit_temperature",
                      lambda logits, labels: seen["temperature"].append(np.array(labels)) or fit_t(logits, labels))
        patch.setattr(calibration, "choose_threshold",
                      lambda s, positives, rule, **kw: seen["threshold"].append(np.array(positives))
                      or choose(s, positives, rule, **kw))
        code = main(["run", str(config)])
    return {"code": code, "out": base / "out", "seen": seen}


@pytest.mark.slow
def test_run_fits_threshold_and_temperature_on_validation_labels_only(spied_run):
    """Five models (teacher + 2 seeds x 2 students), each fitted once, always on the val labels."""
    assert spied_run["code"] == 0
    splits = json.loads((spied_run["out"] / "splits.json").read_text())
    val, test = np.array(splits["val"]["labels"]), np.array(splits["test"]["labels"])
    assert len(val) != len(test)  # so a test-split call could not pass for a validation one
    assert len(spied_run["seen"]["temperature"]) == len(spied_run["seen"]["threshold"]) == 5
    for labels in spied_run["seen"]["temperature"]:
        np.testing.assert_array_equal(labels, val)
    for positives in spied_run["seen"]["threshold"]:
        np.testing.assert_array_equal(positives, val == 1)


@pytest.mark.slow
def test_run_stores_calibration_in_each_checkpoint_and_results_agree(spied_run):
    results = json.loads((spied_run["out"] / "results.json").read_text())
    for row in results["models"]:
        _, meta = load_checkpoint(row["checkpoint"])
        assert row["threshold"] == meta["threshold"] and row["temperature"] == meta["temperature"]
        assert meta["threshold_rule"] == row["threshold_rule"] == "balanced_accuracy"
        assert meta["calibration"]["fitted_on"] == "val"
        assert set(row["at_0.5"]) == {"accuracy", "balanced_accuracy", "sensitivity", "specificity",
                                      "confusion_matrix"}
        assert row["ece_uncalibrated"] >= 0 and row["ece"] >= 0


def test_temperature_is_applied_by_predict_and_in_onnx(tmp_path, capsys):
    """A checkpoint with T = 3: `predict` from the checkpoint and from its ONNX copy both report
    softmax(logits / 3), and the ONNX metadata carries the temperature."""
    require_or_skip("onnxruntime")
    from kdistill.deploy.export import export_checkpoint
    from kdistill.deploy.onnx_model import read_contract

    root = make_image_folder(tmp_path / "data", per_class=3, size=32) / "train"
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    update_meta(checkpoint, {"temperature": 3.0, "threshold": 0.4, "threshold_rule": "prior"})
    export_checkpoint(checkpoint, check_images=root)
    contract = read_contract(checkpoint / "model.onnx")
    assert contract["temperature"] == 3.0 and contract["threshold_rule"] == "prior"
    model, meta = load_checkpoint(checkpoint)
    from kdistill.data import load_eval_folder
    from kdistill.eval.inference import predict_logits

    split, _ = load_eval_folder(root, meta["classes"], 32, 3, "skip")
    logits = predict_logits(model, split, channels=3, mean=meta["mean"], std=meta["std"])
    expected = dict(zip(split.names, scaled_probs(logits, 3.0)[:, 1]))
    for source in (checkpoint, checkpoint / "model.onnx"):
        assert main(["predict", "--checkpoint", str(source), str(root), "--json"]) == 0
        for row in json.loads(capsys.readouterr().out)["predictions"]:
            assert row["positive_probability"] == pytest.approx(expected[row["file"]], abs=1e-5)
            assert row["threshold"] == 0.4


def test_evaluation_applies_the_checkpoint_temperature():
    """Evaluation (`kdistill evaluate` and `run`) scales by the checkpoint's T: the calibrated ECE
    changes, the raw one and the decisions at 0.5 do not; the threshold applies to scaled probs."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = torch.from_numpy(np.stack([np.zeros(200), 4 * (labels - 0.5) + rng.normal(0, 3, 200)], 1))
    meta = {"classes": ["NORMAL", "PNEUMONIA"], "positive_class": "PNEUMONIA", "threshold": 0.6}
    before, _ = score_logits(logits, labels, meta)
    after, probs = score_logits(logits, labels, {**meta, "temperature": 4.0})
    np.testing.assert_allclose(probs, scaled_probs(logits, 4.0))
    assert before["temperature"] == 1.0 and after["temperature"] == 4.0
    assert after["ece_uncalibrated"] == pytest.approx(before["ece"])  # the same raw probabilities
    assert after["ece"] != pytest.approx(before["ece"])
    assert after["at_0.5"] == before["at_0.5"]  # T never moves the 0.5 cut
    assert after["accuracy"] == pytest.approx(((probs[:, 1] >= 0.6) == labels).mean())
    assert all(0 <= bound <= 1 for bound in after["ci"]["accuracy"])


def test_report_table_names_every_threshold_rule():
    """The Markdown calibration table prints each model's rule beside its threshold."""
    from kdistill.report.markdown import calibration_table

    rows = [{"role": "teacher", "threshold": 0.5, "threshold_rule": rule, "at_0.5": {}} for rule in THRESHOLD_RULES]
    lines = calibration_table({"models": rows}).splitlines()[2:]
    assert [line.split("|")[2].strip().split(" ")[1] for line in lines] == [f"({r})" for r in THRESHOLD_RULES]
