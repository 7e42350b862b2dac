"""The threshold study's site calibration: halves split by patient, samples of whole patients,
and a refitted threshold that recovers what a shift of the scores cost."""

import numpy as np

from kdistill.threshold_study import (best_in_hindsight, draw_site_sample, format_site, site_calibration,
                                      site_halves)


def _groups(patients: int, per_patient: int) -> list[str]:
    return [f"p{p}" for p in range(patients) for _ in range(per_patient)]


def test_site_halves_share_no_patient_and_cover_every_image():
    groups = _groups(40, 3)
    calibration, test = site_halves(groups, seed=0)
    assert {groups[i] for i in calibration}.isdisjoint({groups[i] for i in test})
    assert sorted(np.concatenate([calibration, test]).tolist()) == list(range(len(groups)))
    assert len(calibration) == len(test) == 60


def test_a_site_sample_takes_whole_patients_up_to_the_size():
    groups = _groups(40, 3)
    pool = np.arange(60)  # patients p0-p19
    sample = draw_site_sample(pool, groups, 10, np.random.default_rng(0))
    assert 10 <= len(sample) < 13
    patients = {groups[i] for i in sample}
    assert all(sum(groups[i] == p for i in sample) == 3 for p in patients)
    assert set(sample.tolist()) <= set(pool.tolist())


def test_best_in_hindsight_finds_the_separating_cut():
    scores = np.array([0.1, 0.2, 0.6, 0.7])
    positives = np.array([False, False, True, True])
    threshold, value = best_in_hindsight(scores, positives)
    assert value == 1.0 and 0.2 < threshold <= 0.6


def test_site_calibration_recovers_a_shifted_cut():
    """At the site every score moved up: the validation threshold calls most normals positive,
    the refitted one does not."""
    rng = np.random.default_rng(0)
    patients, per_patient = 400, 1
    groups = _groups(patients, per_patient)
    labels = rng.integers(0, 2, size=patients)
    margin = np.where(labels == 1, 2.0, -2.0) + rng.normal(0, 1.0, size=patients) + 3.0  # shifted up by 3
    logits = np.stack([np.zeros(patients), margin], axis=1).astype(np.float32)
    halves = site_halves(groups, seed=0)
    result = site_calibration(logits, labels, 1, groups, halves, validation=(1.0, 0.5),
                              rule="balanced_accuracy", fit_temperature=True)
    assert result["validation"] < 0.75  # sigmoid(margin) >= 0.5 calls most normals positive
    assert set(result["sizes"]) == {50, 100}  # n = 200 would be the whole calibration half: not drawn
    for fit in result["sizes"].values():
        assert fit["mean"] > result["validation"] + 0.1
        assert fit["mean"] <= result["best"] + 1e-9
    table = "\n".join(format_site({"site_halves": {"calibration": len(halves[0]), "test": len(halves[1])},
                                   "site_rule": "balanced_accuracy", "shipped_rule": "youden",
                                   "models": [{"checkpoint": "student", "site": result}]}))
    assert "site, n = 50" in table and "| student |" in table
