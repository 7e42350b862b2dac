"""One paired test of distilled vs student alone over all seeds at once (``results.json``
``pooled_tests``), beside the per-seed McNemar tests.

Why not pool the seeds' decisions into one McNemar table: every seed is scored on the *same* test
images, so the seeds are repeated measurements of one sample, not new samples; counting each
seed's discordant images separately would multiply the evidence by the number of seeds and
overstate significance. The independent units are the test images. For image ``i``

    d_i = (fraction of seeds whose distilled student is right) - (fraction whose student alone is right)

with every model deciding at its own validation threshold (the correctness the per-seed McNemar
test uses). The mean of ``d_i`` is the mean over seeds of the accuracy difference.

The test of H0 "mean d = 0" is a paired sign-flip permutation test over the images: under H0 the
two students are exchangeable on each image, so the sign of each ``d_i`` is as likely flipped as
not. ``PERMUTATIONS`` random flips of all signs (a fixed generator seed, so a results file always
gives the same p) give the null distribution of the sum of ``d_i``; the two-sided p-value is
``(1 + #{|flipped sum| >= |observed sum|}) / (1 + PERMUTATIONS)``, never 0 and exact in
expectation (Monte Carlo standard error about 0.0007 at p = 0.01). It was chosen over the
Wilcoxon signed-rank test because it tests the mean difference itself (the accuracy difference
reported beside it) and needs no tie correction: ``d_i`` takes only a few values (multiples of
1 / seeds), so ranks are mostly ties. Images where both students agree on every seed (``d_i = 0``)
cannot change the flipped sum and are left out of the flips.

The AUC difference is that of the seed-averaged probabilities (each image's mean over seeds),
with the paired bootstrap interval the per-seed tests use.
"""

from __future__ import annotations

import numpy as np

from kdistill.eval.metrics import bootstrap_auc, bootstrap_indices, paired_auc_difference, predict

PERMUTATIONS = 20_000
PERMUTATION_SEED = 0
TEST_NAME = "sign_flip"
FLIPS_PER_CHUNK = 2_000  # rows of random signs drawn at once: memory stays bounded on large test sets


def sign_flip_test(differences: np.ndarray, permutations: int = PERMUTATIONS,
                   seed: int = PERMUTATION_SEED) -> float:
    """Two-sided p-value of "mean of ``differences`` = 0" by random sign flips (integers: exact
    comparisons); 1.0 when every difference is 0."""
    nonzero = differences[differences != 0].astype(np.int64)
    if len(nonzero) == 0:
        return 1.0
    observed = abs(int(nonzero.sum()))
    rng = np.random.default_rng(seed)
    at_least = 0
    for start in range(0, permutations, FLIPS_PER_CHUNK):
        rows = min(FLIPS_PER_CHUNK, permutations - start)
        signs = rng.integers(0, 2, size=(rows, len(nonzero)), dtype=np.int64) * 2 - 1  # [rows, images]
        at_least += int((np.abs(signs @ nonzero) >= observed).sum())
    return (1 + at_least) / (1 + permutations)


def seed_pairs(rows: list[dict]) -> dict[str | None, list[tuple[dict, dict]]]:
    """Per distilled method: the (student alone, distilled) rows of every seed that has both, in
    the rows' (seed) order. A run of one method has one entry."""
    baselines = {r.get("seed"): r for r in rows if r.get("role") == "baseline"}
    pairs: dict[str | None, list[tuple[dict, dict]]] = {}
    for row in rows:
        if row.get("role") == "distilled" and row.get("seed") in baselines:
            pairs.setdefault(row.get("method"), []).append((baselines[row.get("seed")], row))
    return pairs


def pooled_tests(rows: list[dict], probs: dict[str, np.ndarray], labels: np.ndarray,
                 positive_index: int | None) -> list[dict]:
    """One row per distilled method with at least two seeds: the sign-flip test over test images of
    the per-image difference in the fraction of seeds right, and the seed-averaged AUC difference."""
    tests = []
    for method, pairs in seed_pairs(rows).items():
        if len({distilled.get("seed") for _, distilled in pairs}) < 2:
            continue  # one seed: the per-seed McNemar test already says it all
        tests.append(_pooled_test(method, pairs, probs, labels, positive_index))
    return tests


def _pooled_test(method: str | None, pairs: list[tuple[dict, dict]], probs: dict[str, np.ndarray],
                 labels: np.ndarray, positive_index: int | None) -> dict:
    def right(row: dict) -> np.ndarray:
        return (predict(probs[row["id"]], positive_index, row.get("threshold")) == labels).astype(np.int64)

    # Seeds right per image, [images]; their difference is seeds * d_i (an integer)
    seeds_right = [sum(right(pair[side]) for pair in pairs) for side in (0, 1)]
    difference = seeds_right[1] - seeds_right[0]
    averaged = [np.mean([probs[pair[side]["id"]] for pair in pairs], axis=0) for side in (0, 1)]
    whole = np.arange(len(labels))[None]  # one "resample": the test split itself
    aucs = [bootstrap_auc(p, labels, positive_index, whole)[0] for p in averaged]
    auc_diff = None if np.isnan(aucs).any() else float(aucs[1] - aucs[0])
    return {**({"method": method} if method is not None else {}),
            "seeds": [distilled.get("seed") for _, distilled in pairs],
            "baseline": [baseline["id"] for baseline, _ in pairs],
            "distilled": [distilled["id"] for _, distilled in pairs],
            "test": TEST_NAME, "permutations": PERMUTATIONS, "images": int(len(labels)),
            "p_value": sign_flip_test(difference),
            "accuracy_diff": float(difference.mean() / len(pairs)),
            "images_better": int((difference > 0).sum()), "images_worse": int((difference < 0).sum()),
            "auc_diff": auc_diff,
            "auc_diff_ci": paired_auc_difference(*averaged, labels, positive_index,
                                                 bootstrap_indices(len(labels)))}


def pooled_tests_from_results(results: dict) -> list[dict]:
    """``pooled_tests`` of a ``results.json`` (computed from its ``predictions`` and the rows'
    thresholds when the file predates them); empty when it has no predictions."""
    if "pooled_tests" in results:
        return results["pooled_tests"]
    predictions = results.get("predictions") or {}
    probabilities = predictions.get("probabilities") or {}
    rows = [r for r in results.get("models") or [] if r.get("id") in probabilities]
    if not rows or "labels" not in predictions:
        return []
    dataset = results.get("dataset") or {}
    positive = dataset.get("positive_class")
    classes = list(dataset.get("classes") or [])
    positive_index = classes.index(positive) if positive in classes else None
    return pooled_tests(rows, {r["id"]: np.asarray(probabilities[r["id"]], dtype=float) for r in rows},
                        np.asarray(predictions["labels"]), positive_index)
