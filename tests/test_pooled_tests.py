"""The test of distilled vs student alone over all seeds at once (``pooled_tests``): the test images
are the units, each image's difference is the share of seeds the distilled student gets right minus
the share the student alone does, tested by random sign flips. Hand-built predictions with known
answers, and an older results.json that gains the table through ``kdistill report``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kdistill.cli import main
from kdistill.eval.evaluate import run_statistics
from kdistill.eval.metrics import mcnemar_exact
from kdistill.eval.pooled import pooled_tests, pooled_tests_from_results, sign_flip_test
from test_report_html import synthetic_results


def binary(positive: list[float] | np.ndarray) -> np.ndarray:
    positive = np.asarray(positive, dtype=float)
    return np.stack([1 - positive, positive], 1)


def students(seeds: list[int], method: str = "kd", thresholds=None) -> list[dict]:
    """Baseline and distilled rows of each seed (what pooled_tests reads: id, role, seed, threshold)."""
    thresholds = thresholds or {}
    return [{"id": f"{role}-seed{s}", "role": role, "seed": s, "method": "ce" if role == "baseline" else method,
             "threshold": thresholds.get(f"{role}-seed{s}", 0.5)}
            for s in seeds for role in ("baseline", "distilled")]


def fixing(labels: np.ndarray, wrong: list[np.ndarray], right: np.ndarray) -> np.ndarray:
    """Confident probabilities that are right on every image except those in ``wrong``."""
    correct = np.ones(len(labels), bool)
    for images in wrong:
        correct[images] = False
    correct[right] = True
    return binary(np.where(correct == (labels == 1), 0.9, 0.1))


def test_every_seed_fixing_the_same_ten_images_is_significant():
    """Each seed's distilled student is right on the same 10 images its student alone misses, and
    nothing else differs: d_i = 1 on 10 images, so p = P(|sum of 10 random signs| = 10) = 2 / 1024."""
    labels = np.tile([0, 1], 50)
    fixed = np.arange(10)
    probs = {}
    for seed in (0, 1, 2):
        probs[f"baseline-seed{seed}"] = fixing(labels, [fixed], np.array([], int))
        probs[f"distilled-seed{seed}"] = fixing(labels, [], np.array([], int))
    [test] = pooled_tests(students([0, 1, 2]), probs, labels, 1)
    assert test["p_value"] == pytest.approx(2 / 1024, abs=6e-4)  # Monte Carlo, 20,000 flips
    assert test["accuracy_diff"] == pytest.approx(0.10)
    assert (test["images_better"], test["images_worse"]) == (10, 0)
    assert test["seeds"] == [0, 1, 2] and test["method"] == "kd" and test["test"] == "sign_flip"
    assert test["distilled"] == ["distilled-seed0", "distilled-seed1", "distilled-seed2"]


def test_seeds_that_lean_the_same_way_reach_significance_together_but_not_as_fake_samples():
    """Per seed the distilled student fixes the same 7 images and breaks a different one: McNemar
    7 vs 1 (p 0.070) in every seed. Over the images, in units of 1/3: seven d = 3, three d = -1,
    observed sum 18; 30 of the 1024 sign patterns reach |sum| >= 18 (all sevens one way: 2 x 8;
    six of them and the three ones: 2 x 7), so p = 30/1024. Pooling the seeds as if they were new
    images (21 vs 3) would claim far more (p ~ 0.0003)."""
    labels = np.tile([0, 1], 100)
    fixed = np.arange(7)
    probs = {}
    for seed in (0, 1, 2):
        probs[f"baseline-seed{seed}"] = fixing(labels, [fixed], np.array([], int))
        probs[f"distilled-seed{seed}"] = fixing(labels, [np.array([100 + seed])], np.array([], int))
        per_seed = mcnemar_exact(*(probs[f"{r}-seed{seed}"].argmax(1) == labels for r in ("baseline", "distilled")))
        assert per_seed["p_value"] == pytest.approx(18 / 256)
    [test] = pooled_tests(students([0, 1, 2]), probs, labels, 1)
    assert test["p_value"] == pytest.approx(30 / 1024, abs=4e-3) and test["p_value"] < 0.05
    assert (test["images_better"], test["images_worse"]) == (7, 3)
    alone_only = np.arange(24) < 3  # the 3 seeds' discordant images side by side: 3 alone-only, 21 distilled-only
    as_independent = mcnemar_exact(alone_only, ~alone_only)
    assert as_independent["p_value"] < 0.01 < test["p_value"]


def test_identical_students_give_p_one():
    labels = np.tile([0, 1], 20)
    rng = np.random.default_rng(1)
    probs = {}
    for seed in (0, 1):
        same = binary(rng.uniform(size=len(labels)))
        probs[f"baseline-seed{seed}"] = probs[f"distilled-seed{seed}"] = same
    [test] = pooled_tests(students([0, 1]), probs, labels, 1)
    assert test["p_value"] == 1.0 and test["accuracy_diff"] == 0.0
    assert (test["images_better"], test["images_worse"]) == (0, 0)
    assert test["auc_diff"] == 0.0 and test["auc_diff_ci"] == [0.0, 0.0]


def test_golden_mean_difference_at_each_students_own_threshold():
    """Six images, two seeds. Seeds right per image (alone / distilled): seed 0 at thresholds
    0.5 / 0.25 -> 3 / 5 right; seed 1 -> 5 / 4 right. Per image d = [0, 0, +1/2, +1/2, 0, -1/2]:
    mean 1/12 (the mean of the per-seed differences +2/6 and -1/6), 2 images better, 1 worse; the
    integer sum 1 of an odd count is never beaten by a flip, so p = 1."""
    labels = np.array([1, 1, 1, 0, 0, 0])
    seed0 = binary([0.6, 0.4, 0.3, 0.2, 0.7, 0.1])
    probs = {"baseline-seed0": seed0, "distilled-seed0": seed0,  # same probabilities, other threshold
             "baseline-seed1": binary([0.9, 0.8, 0.7, 0.6, 0.1, 0.2]),
             "distilled-seed1": binary([0.9, 0.2, 0.7, 0.1, 0.1, 0.6])}
    rows = students([0, 1], thresholds={"distilled-seed0": 0.25})
    [test] = pooled_tests(rows, probs, labels, 1)
    assert test["accuracy_diff"] == pytest.approx(1 / 12)
    assert (test["images_better"], test["images_worse"]) == (2, 1)
    assert test["p_value"] == 1.0
    averaged = [(probs[f"{r}-seed0"][:, 1] + probs[f"{r}-seed1"][:, 1]) / 2 for r in ("baseline", "distilled")]
    assert test["auc_diff"] == pytest.approx(roc_auc_score(labels, averaged[1]) - roc_auc_score(labels, averaged[0]))


def test_one_seed_gets_no_pooled_test_and_run_statistics_writes_them():
    labels = np.tile([0, 1], 10)
    probs = {f"{r}-seed{s}": binary(np.full(len(labels), 0.7)) for s in (0, 1) for r in ("baseline", "distilled")}
    assert pooled_tests(students([0]), probs, labels, 1) == []
    rows = [{**row, "accuracy": 0.5, "auc": None} for row in students([0, 1])]
    stats = run_statistics(rows, probs, labels, 1)
    assert [t["seeds"] for t in stats["pooled_tests"]] == [[0, 1]]


def test_sign_flip_is_deterministic_and_two_sided():
    differences = np.array([3, 3, 3, 3, 3, 3, 3, -1, 2, 0])
    assert sign_flip_test(differences) == sign_flip_test(differences)
    assert sign_flip_test(differences) == sign_flip_test(-differences)  # either direction
    assert sign_flip_test(np.zeros(5, int)) == 1.0


@pytest.mark.parametrize("compared", [False, True])
def test_report_of_an_older_results_file_shows_the_pooled_test(tmp_path, compared):
    """A results.json written before ``pooled_tests``: ``kdistill report`` computes them from its
    predictions and thresholds, shows them in both reports, and leaves results.json as it was."""
    results = synthetic_results(seeds=(0, 1, 2))
    if compared:  # a comparison of methods: the methods table gains the pooled column
        for row in results["models"]:
            if row["role"] == "distilled":
                row.update(method="kd", group="distilled-kd")
        for test in results["paired_tests"]:
            test["method"] = "kd"
    assert "pooled_tests" not in results
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path)]) == 0
    [expected] = pooled_tests_from_results(results)
    assert expected["seeds"] == [0, 1, 2] and 0 < expected["p_value"] <= 1
    report = (tmp_path / "report.md").read_text()
    diff = f"{100 * expected['accuracy_diff']:+.2f}"
    p = f"{expected['p_value']:.3f}" if expected["p_value"] >= 0.001 else "< 0.001"
    in_sentence = f"p = {p}" if expected["p_value"] >= 0.001 else "p < 0.001"
    assert "Pooled over seeds 0, 1, 2 (" in report and f"accuracy diff {diff} points, {in_sentence};" in report
    if compared:
        [kd_line] = [line for line in report.splitlines() if line.startswith("| kd |")]
        assert f"| {diff} (p {p}; {expected['images_better']} better, {expected['images_worse']} worse) |" in kd_line
    page = (tmp_path / "report.html").read_text()
    assert "<h3>Pooled over seeds</h3>" in page and f"<td>{diff}</td>" in page
    assert "pooled_tests" not in json.loads((tmp_path / "results.json").read_text())
