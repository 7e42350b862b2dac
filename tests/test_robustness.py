"""Robustness records on the shift battery, the ``battery`` threshold rule, and their place in a
run's checkpoints, results.json and reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from kdistill.config import load_config
from kdistill.data import ImageSplit
from kdistill.data.shifts import BATTERY, SEVERITIES, render_shift
from kdistill.eval.calibration import calibrate, choose_threshold
from kdistill.eval.robustness import Battery, battery_logits, robustness
from kdistill.errors import ConfigError
from kdistill.pipeline import run

from conftest import tiny_config, write_config

META = {"classes": ["NORMAL", "PNEUMONIA"], "positive_class": "PNEUMONIA", "channels": 1,
        "mean": [0.449], "std": [0.226], "threshold": 0.5, "temperature": 1.0}


class MeanGrey(nn.Module):
    """Calls PNEUMONIA when the image is brighter than mid-grey: brightness shifts fool it,
    a blur does not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = 8 * x.mean(dim=(1, 2, 3))
        return torch.stack([-score, score], 1)


def grey_split(count: int = 40, size: int = 32) -> ImageSplit:
    labels = torch.arange(count) % 2
    base = torch.where(labels == 1, 150, 95).to(torch.uint8)
    images = base.view(-1, 1, 1, 1).expand(count, 1, size, size).contiguous()
    return ImageSplit(images, labels, [f"i{i}" for i in range(count)], [f"g{i}" for i in range(count)])


def test_a_record_holds_every_shift_and_severity_and_its_means_and_drops_add_up():
    split = grey_split()
    battery = Battery(split)
    model = MeanGrey()
    from kdistill.eval.inference import predict_logits

    clean = predict_logits(model, split, channels=1, mean=META["mean"], std=META["std"])
    shifted = battery_logits(model, META, battery)
    record = robustness(clean, shifted, split.labels.numpy(), META, battery)
    assert set(record["shifts"]) == {shift.name for shift in BATTERY}
    assert all(len(entries) == len(SEVERITIES) for entries in record["shifts"].values())
    assert record["clean"]["balanced_accuracy"] == 1.0
    everything = [e["balanced_accuracy"] for entries in record["shifts"].values() for e in entries]
    assert record["mean"]["balanced_accuracy"] == pytest.approx(np.mean(everything))
    assert record["drop"]["balanced_accuracy"] == pytest.approx(1.0 - np.mean(everything))
    # Darkening the bright half turns it NORMAL: the model fails half the images under brightness.
    assert record["shifts"]["brightness"][2]["balanced_accuracy"] < 0.9
    assert record["shifts"]["blur"][2]["balanced_accuracy"] == 1.0  # a flat image is unchanged by blur
    middle = record["by_severity"][1]["balanced_accuracy"]
    assert middle == pytest.approx(np.mean([record["shifts"][s.name][1]["balanced_accuracy"] for s in BATTERY]))
    assert record["drop_by_severity"][1]["balanced_accuracy"] == pytest.approx(1.0 - middle)


def test_the_battery_rule_fits_on_the_renderings_as_well():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    clean = torch.tensor(np.stack([-(labels * 4.0 - 2 + rng.normal(0, 0.5, 100)), labels * 4.0 - 2], 1))
    same = calibrate(clean, labels, 1, rule="balanced_accuracy", temperature=False)
    pooled_same = calibrate(clean, labels, 1, rule="battery", temperature=False, shifted_logits=[clean, clean])
    assert pooled_same["threshold"] == pytest.approx(same["threshold"])
    # Under shift every score drops: the pooled cut must move below the clean-only cut.
    lowered = clean.clone()
    lowered[:, 1] -= 3.0
    moved = calibrate(clean, labels, 1, rule="battery", temperature=False, shifted_logits=[lowered])
    assert moved["threshold"] < same["threshold"]
    assert moved["calibration"]["battery_renderings"] == 1
    with pytest.raises(ValueError, match="shift battery"):
        calibrate(clean, labels, 1, rule="battery", temperature=False)
    assert choose_threshold(np.array([0.1, 0.9]), np.array([False, True]), "battery") == pytest.approx(0.5)


def test_the_battery_rule_needs_the_battery(tmp_path):
    with pytest.raises(ConfigError, match="robustness.battery"):
        load_config(None, ["data.dataset=digits", "calibration.threshold_rule=battery", "robustness.battery=false"])


@pytest.mark.slow
def test_a_run_stores_a_record_per_model_and_reports_it(image_root, tmp_path):
    config = tiny_config(image_root, tmp_path / "run", calibration={"threshold_rule": "battery"},
                         robustness={"battery": True})
    results = run(load_config(write_config(tmp_path / "c.yaml", config)))
    for row in results["models"]:
        record = row["robustness"]
        assert record["images"] == results["dataset"]["sizes"]["val"]
        assert len(record["shifts"]) == len(BATTERY)
        meta = json.loads((tmp_path / "run" / row["checkpoint"].split("run/")[-1] / "model.json").read_text())
        assert meta["robustness"] == record
        assert meta["calibration"]["battery_renderings"] == 3 * len(BATTERY)
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "## Robustness: the shift battery" in markdown and "zoom_out" in markdown
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Robustness: the shift battery" in html and "data:image/png;base64" in html


@pytest.mark.slow
def test_a_run_without_the_battery_has_no_record(image_root, tmp_path):
    config = tiny_config(image_root, tmp_path / "run", robustness={"battery": False})
    results = run(load_config(write_config(tmp_path / "c.yaml", config)))
    assert all(row["robustness"] is None for row in results["models"])
    assert "Robustness" not in (tmp_path / "run" / "report.md").read_text()


def test_renderings_do_not_depend_on_the_other_images_of_the_split():
    split = grey_split(count=70)
    whole = render_shift(split.images, "zoom_in", 1)
    assert torch.equal(whole[:64], render_shift(split.images[:64], "zoom_in", 1))


def test_shifts_the_training_views_drew_are_kept_apart():
    from kdistill.data.shifts import covered_by
    from kdistill.data.views import AugmentSpec
    from kdistill.eval.inference import predict_logits

    assert covered_by(None) == [] and covered_by(AugmentSpec()) == []
    spec = AugmentSpec(scale=(0.6, 1.0), brightness=0.25, noise=0.05, low_resolution=0.5)
    assert covered_by(spec) == ["zoom_in", "brightness", "noise", "resolution"]
    split, model = grey_split(), MeanGrey()
    battery = Battery(split)
    clean = predict_logits(model, split, channels=1, mean=META["mean"], std=META["std"])
    record = robustness(clean, battery_logits(model, META, battery), split.labels.numpy(), META, battery,
                        seen=covered_by(spec))
    unseen = [s.name for s in BATTERY if s.name not in covered_by(spec)]
    expected = np.mean([e["balanced_accuracy"] for name in unseen for e in record["shifts"][name]])
    assert record["seen_in_training"] == covered_by(spec)
    assert record["unseen"]["mean"]["balanced_accuracy"] == pytest.approx(expected)
    assert record["unseen"]["drop"]["balanced_accuracy"] == pytest.approx(1.0 - expected)


def test_the_battery_test_measures_balanced_accuracy_and_its_sign():
    from kdistill.eval.robustness import battery_tests

    labels = np.array([0] * 10 + [1] * 30)
    def row(role, seed, right):
        return {"id": f"{role}-{seed}", "role": role, "seed": seed,
                "robustness": {"renderings": 2, "renderings_right": list(right)}}
    alone = np.array([1] * 10 + [2] * 30)  # class 0: half the renderings right; class 1: all
    better = np.array([2] * 10 + [2] * 30)  # every rendering right
    rows = [row("baseline", s, alone) for s in (0, 1)] + [row("distilled", s, better) for s in (0, 1)]
    (test,) = battery_tests(rows, labels)
    # Balanced accuracy over the battery: alone (0.5 + 1) / 2 = 0.75, distilled 1.0.
    assert test["balanced_accuracy_diff"] == pytest.approx(0.25)
    assert test["images_better"] == 10 and test["images_worse"] == 0 and test["p_value"] < 0.01
    assert battery_tests(rows[:1] + rows[2:3], labels) == []  # one seed: no pooled test
