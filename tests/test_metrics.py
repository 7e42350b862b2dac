"""Bootstrap intervals, McNemar's exact test, the paired AUC difference and the per-seed summary,
checked against scikit-learn/scipy and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kdistill.eval.evaluate import paired_tests, run_statistics, summarize
from kdistill.eval.metrics import (Resamples, bootstrap_auc, bootstrap_ci, bootstrap_indices, mcnemar_exact,
                              mean_std, paired_auc_difference, percentile_interval)
from kdistill.report.markdown import markdown_report, verdict


def binary_probs(scores: np.ndarray) -> np.ndarray:
    return np.stack([1 - scores, scores], axis=1)


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    """300 labels and rounded (so tied) positive-class scores that are informative but imperfect."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(np.clip(0.35 * labels + rng.normal(0.35, 0.2, 300), 0, 1), 2)
    return labels, scores


def test_bootstrap_auc_equals_sklearn_on_every_resample(scored):
    """The vectorized rank formula gives sklearn's AUC (ties included) for each resample."""
    labels, scores = scored
    indices = bootstrap_indices(len(labels), resamples=30, seed=1)
    ours = bootstrap_auc(binary_probs(scores), labels, 1, indices)
    expected = [roc_auc_score(labels[i], scores[i]) for i in indices.as_array()]
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_bootstrap_auc_multiclass_is_sklearn_macro_ovr():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 120)
    probs = rng.dirichlet(np.ones(4), 120) + np.eye(4)[labels] * 0.3
    probs /= probs.sum(1, keepdims=True)
    indices = bootstrap_indices(120, resamples=10, seed=2)
    expected = [roc_auc_score(labels[i], probs[i], multi_class="ovr", average="macro")
                for i in indices.as_array()]
    np.testing.assert_allclose(bootstrap_auc(probs, labels, None, indices), expected, atol=1e-12)


def test_resamples_missing_a_class_have_no_auc_and_are_skipped():
    """With 1 positive in 4 images many resamples have no positive: NaN, left out of the interval."""
    labels, scores = np.array([0, 0, 0, 1]), np.array([0.1, 0.2, 0.3, 0.9])
    indices = bootstrap_indices(4, resamples=200, seed=0)
    aucs = bootstrap_auc(binary_probs(scores), labels, 1, indices)
    has_positive = (labels[indices.as_array()] == 1).any(1)
    assert np.isnan(aucs[~has_positive]).all() and (aucs[has_positive] == 1.0).all()
    assert percentile_interval(aucs) == [1.0, 1.0]
    assert percentile_interval(np.full(5, np.nan)) is None


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate(scored):
    labels, scores = scored
    probs = binary_probs(scores)
    first = bootstrap_ci(probs, labels, 1, 0.5, bootstrap_indices(len(labels)))
    again = bootstrap_ci(probs, labels, 1, 0.5, bootstrap_indices(len(labels)))
    other_seed = bootstrap_ci(probs, labels, 1, 0.5, bootstrap_indices(len(labels), seed=7))
    assert first == again and first != other_seed
    accuracy = ((scores >= 0.5) == labels).mean()
    low, high = first["accuracy"]
    assert low < accuracy < high and 0.05 < high - low < 0.2  # ~ +-1.96 sqrt(p(1-p)/300) = +-0.05
    low, high = first["auc"]
    assert low < roc_auc_score(labels, scores) < high


def test_resamples_come_in_bounded_chunks_and_stay_paired(scored):
    """A large test set is resampled in chunks (bounded memory); chunked scoring equals scoring
    the same resamples at once, and a fresh Resamples with the same seed repeats them."""
    labels, scores = scored
    chunked = Resamples(len(labels), count=50, seed=3, values_per_chunk=7 * len(labels))
    shapes = [chunk.shape for chunk in chunked.chunks()]
    assert shapes == [(7, 300)] * 7 + [(1, 300)]
    everything = chunked.as_array()
    assert np.array_equal(everything, Resamples(len(labels), 50, 3, 7 * len(labels)).as_array())
    probs = binary_probs(scores)
    np.testing.assert_array_equal(bootstrap_auc(probs, labels, 1, chunked),
                                  bootstrap_auc(probs, labels, 1, everything))
    assert bootstrap_ci(probs, labels, 1, 0.5, chunked) == bootstrap_ci(probs, labels, 1, 0.5, everything)
    big = Resamples(200_000)
    first = next(big.chunks())
    assert first.shape == (10, 200_000)  # 2 M indices per chunk, not 200 M at once


def test_mcnemar_exact_counts_discordant_pairs_only():
    """10 images only B gets right, 0 only A: two-sided binomial p = 2 * 0.5**10."""
    a = np.array([True] * 5 + [False] * 10)
    b = np.array([True] * 15)
    result = mcnemar_exact(a, b)
    assert result["a_only_correct"] == 0 and result["b_only_correct"] == 10
    assert result["p_value"] == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_exact(b, a)["p_value"] == pytest.approx(result["p_value"])  # symmetric
    assert mcnemar_exact(a, a) == {"a_only_correct": 0, "b_only_correct": 0, "p_value": 1.0}
    balanced = mcnemar_exact(np.array([True, False] * 5), np.array([False, True] * 5))
    assert balanced["p_value"] == pytest.approx(1.0)


def test_paired_auc_difference_detects_a_better_model(scored):
    labels, scores = scored
    indices = bootstrap_indices(len(labels))
    same = paired_auc_difference(binary_probs(scores), binary_probs(scores), labels, 1, indices)
    assert same == [0.0, 0.0]  # paired: identical models differ by exactly 0 on every resample
    perfect = binary_probs(labels * 0.8 + 0.1)
    low, high = paired_auc_difference(binary_probs(scores), perfect, labels, 1, indices)
    assert 0 < low < high <= 1 - roc_auc_score(labels, scores) + 0.05


def test_mean_std_uses_sample_std_and_skips_undefined_values():
    assert mean_std([0.8, 0.9, 1.0]) == pytest.approx({"mean": 0.9, "std": 0.1, "n": 3})
    assert mean_std([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}
    assert mean_std([None, 0.5, None]) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert mean_std([None]) == {"mean": None, "std": None, "n": 0}


def _row(role: str, seed: int | None, probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    decisions = (probs[:, 1] >= threshold).astype(int)
    return {"id": role if role == "teacher" else f"{role}-seed{seed}", "role": role, "seed": seed,
            "threshold": threshold, "accuracy": float((decisions == labels).mean()),
            "balanced_accuracy": None, "sensitivity": None, "specificity": None, "ece": 0.0,
            "auc": float(roc_auc_score(labels, probs[:, 1]))}


def test_paired_tests_pair_students_of_the_same_seed_at_their_own_thresholds():
    """Seed 0: the baseline misses 2 positives at its threshold 0.5 the distilled student (threshold
    0.3) gets right, and gets 1 negative right the distilled one misses."""
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    base = binary_probs(np.array([0.1, 0.2, 0.35, 0.4, 0.45, 0.9, 0.8, 0.7]))
    dist = base.copy()
    rows = [_row("baseline", 0, base, labels, 0.5), _row("distilled", 0, dist, labels, 0.3),
            _row("baseline", 1, base, labels, 0.5), _row("distilled", 1, base, labels, 0.5)]
    probs = {"baseline-seed0": base, "distilled-seed0": dist, "baseline-seed1": base, "distilled-seed1": base}
    tests = paired_tests(rows, probs, labels, 1)
    assert [(t["seed"], t["baseline"], t["distilled"]) for t in tests] == [
        (0, "baseline-seed0", "distilled-seed0"), (1, "baseline-seed1", "distilled-seed1")]
    first = tests[0]
    assert (first["baseline_only_correct"], first["distilled_only_correct"]) == (1, 2)
    assert first["p_value"] == pytest.approx(1.0)  # 2 vs 1: no evidence
    assert first["accuracy_diff"] == pytest.approx(1 / 8) and first["auc_diff"] == 0.0
    assert first["auc_diff_ci"] == [0.0, 0.0] and first["test"] == "mcnemar"


def test_run_statistics_summary_and_predictions():
    labels = np.array([0, 1, 0, 1])
    probs = {"teacher": binary_probs(np.array([0.1, 0.9, 0.2, 0.8])),
             "baseline-seed0": binary_probs(np.array([0.6, 0.9, 0.2, 0.4])),
             "baseline-seed1": binary_probs(np.array([0.1, 0.9, 0.2, 0.8]))}
    rows = [_row("teacher", 0, probs["teacher"], labels, 0.5),
            _row("baseline", 0, probs["baseline-seed0"], labels, 0.5),
            _row("baseline", 1, probs["baseline-seed1"], labels, 0.5)]
    stats = run_statistics(rows, probs, labels, 1)
    assert stats["summary"] == summarize(rows)
    assert stats["summary"]["teacher"]["accuracy"] == {"mean": 1.0, "std": 0.0, "n": 1}
    baseline = stats["summary"]["baseline"]["accuracy"]
    assert baseline["n"] == 2 and baseline["mean"] == pytest.approx(0.75)
    assert baseline["std"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert stats["paired_tests"] == []  # no distilled rows
    assert stats["predictions"]["labels"] == [0, 1, 0, 1]
    assert stats["predictions"]["probabilities"]["baseline-seed0"][0] == pytest.approx([0.4, 0.6])


def test_verdict_sentence_follows_the_p_values_and_directions():
    def t(p, diff):
        return {"p_value": p, "accuracy_diff": diff}

    assert verdict([t(0.6, 0.004)]).startswith("Distillation did not help significantly")
    assert "in any of the 2 seeds" in verdict([t(0.6, 0.01), t(0.2, -0.01)])
    assert verdict([t(0.01, 0.03), t(0.0004, 0.02)]) == (
        "Distillation helped: the distilled student was significantly more accurate than the student "
        "alone in every one of the 2 seeds (McNemar p = 0.010, < 0.001).")
    assert verdict([t(0.01, -0.03)]).startswith("Distillation hurt")
    assert verdict([t(0.01, 0.03), t(0.5, 0.0), t(0.001, -0.02)]).startswith("Mixed")


def test_report_of_an_older_results_file_has_no_statistics_sections():
    """results.json written before seeds/calibration existed still renders (keys are optional)."""
    row = {"name": "reference_student", "role": "baseline", "accuracy": 0.9, "balanced_accuracy": 0.9,
           "sensitivity": 0.9, "specificity": 0.9, "auc": 0.95, "ece": 0.02, "params": 634, "macs": 28160,
           "latency_ms_batch1": 0.1, "throughput_img_s": 1000.0, "threads": 1, "threshold": 0.5}
    results = {"dataset": {"root": "data", "classes": ["NORMAL", "PNEUMONIA"], "positive_class": "PNEUMONIA"},
               "models": [row]}
    report = markdown_report(results)
    assert "| reference_student | student alone | 90.0 |" in report
    assert "Mean ±" not in report and "McNemar" not in report and "Decision threshold 0.50" in report
