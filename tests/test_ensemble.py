"""The ensemble teacher: the mean of its members' probabilities, its checkpoint, its config, and a
whole run with one (members trained, checkpointed, reported beside the ensemble, reused on resume)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_image_folder, tiny_config, write_config
from kdistill.cli import main
from kdistill.config import from_dict, teacher_members
from kdistill.errors import ConfigError
from kdistill.models import build_model, find_head
from kdistill.models.checkpoint import load_checkpoint, save_checkpoint
from kdistill.models.ensemble import Ensemble, ensemble_architecture, model_label
from kdistill.report.format import model_label as row_label


def _member(width: int) -> torch.nn.Module:
    torch.manual_seed(width)
    return build_model("tiny_cnn_d2", 2, input_size=16, width=width).eval()


def test_ensemble_output_is_the_log_of_the_mean_member_probability():
    members = [_member(4), _member(6), _member(8)]
    images = torch.randn(5, 3, 16, 16)
    expected = torch.stack([m(images).softmax(1) for m in members]).mean(0)
    with torch.no_grad():
        out = Ensemble(members)(images)
    assert torch.allclose(out.softmax(1), expected, atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)  # already log-probabilities


def test_an_overconfident_member_does_not_outvote_the_others():
    """Mean probabilities, not mean logits: one member with huge logits for class 0 moves the
    mean probability by at most 1/M, where averaging logits would hand it the decision."""
    confident = torch.nn.Linear(3 * 16 * 16, 2)
    torch.nn.init.zeros_(confident.weight)
    confident.bias.data = torch.tensor([50.0, 0.0])
    members = [torch.nn.Sequential(torch.nn.Flatten(), confident)]
    for _ in range(2):
        vote = torch.nn.Linear(3 * 16 * 16, 2)
        torch.nn.init.zeros_(vote.weight)
        vote.bias.data = torch.tensor([0.0, 3.0])
        members.append(torch.nn.Sequential(torch.nn.Flatten(), vote))
    with torch.no_grad():
        probs = Ensemble(members)(torch.zeros(1, 3, 16, 16)).softmax(1)[0]
    assert probs[1] > 0.6  # two of three members say class 1 with p = 0.95
    mean_logits = torch.stack([m(torch.zeros(1, 3, 16, 16)) for m in members]).mean(0).softmax(1)[0]
    assert mean_logits[0] > 0.99  # what averaging logits would have said


def test_an_ensemble_checkpoint_loads_with_nothing_else(tmp_path):
    members = [_member(4), _member(6)]
    arch = ensemble_architecture(2, 16, 3, [{"name": "tiny_cnn_d2", "args": {
        "num_classes": 2, "input_size": 16, "in_channels": 3, "width": w}} for w in (4, 6)])
    meta = {"architecture": arch, "classes": ["a", "b"], "input_size": 16, "channels": 3,
            "mean": [0.5] * 3, "std": [0.25] * 3}
    save_checkpoint(tmp_path / "teacher", Ensemble(members), meta)
    model, loaded = load_checkpoint(tmp_path / "teacher")
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(images), Ensemble(members)(images))
    assert model_label(loaded["architecture"]) == "ensemble: tiny_cnn_d2 + tiny_cnn_d2"


def test_an_ensemble_has_no_single_head_for_feature_methods():
    with pytest.raises(ConfigError, match="no single classifier head"):
        find_head(Ensemble([_member(4), _member(6)]))


def _config(tmp_path, **teacher) -> dict:
    return tiny_config(tmp_path / "data", tmp_path / "out", teacher=teacher)


def test_members_inherit_the_teacher_settings_and_override_their_own(tmp_path):
    config = from_dict(_config(tmp_path, members=[{"model_args": {"width": 6}},
                                                  {"model": "tiny_cnn_d3", "train": {"lr": 0.05}}]))
    first, second = teacher_members(config.teacher)
    assert (first.model, first.model_args, first.train.lr) == ("tiny_cnn_d2", {"width": 6}, 0.01)
    assert (second.model, second.model_args, second.train.lr, second.train.epochs) == (
        "tiny_cnn_d3", {"width": 4}, 0.05, 2)
    assert teacher_members(from_dict(_config(tmp_path)).teacher) == []


@pytest.mark.parametrize("members, message", [
    ([{"model": "tiny_cnn_d3"}], "at least two members"),
    ([{"epochs": 3}, {}], r"teacher.members\[0\].epochs: not a member setting"),
    ([{}, {"train": {"lr": -1}}], r"teacher.members\[1\].train.lr: -1.0 must be positive"),
    ([{}, {"mode": "sideways"}], r"teacher.members\[1\].mode: 'sideways' is not one of"),
    ([{}, "resnet18"], r"teacher.members\[1\]: expected dict"),
])
def test_bad_members_are_refused_naming_the_key(tmp_path, members, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(_config(tmp_path, members=members))


def test_a_feature_method_with_an_ensemble_is_refused_before_any_image_is_read(tmp_path):
    root = make_image_folder(tmp_path / "data")
    config = _config(tmp_path, members=[{}, {"model_args": {"width": 6}}])
    config["distill"] = {"method": "fitnet"}
    code = main(["run", str(write_config(tmp_path / "c.yaml", config))])
    assert code == 2 and not (tmp_path / "out").exists() and root.is_dir()


@pytest.mark.slow
def test_a_run_with_an_ensemble_teacher(tmp_path, capsys):
    """Two members are trained into teacher/member<k>/, the ensemble is written to teacher/ and
    evaluated like any model; members get their own rows (not in the summary); resume reuses all."""
    make_image_folder(tmp_path / "data")
    config = _config(tmp_path, members=[{}, {"model": "tiny_cnn_d3", "train": {"epochs": 1}}])
    config["robustness"] = {"battery": False}
    path = write_config(tmp_path / "c.yaml", config)
    assert main(["run", str(path)]) == 0
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    rows = {row["id"]: row for row in results["models"]}
    assert [row["role"] for row in results["models"]][:3] == ["teacher", "member", "member"]
    assert rows["teacher"]["name"] == "ensemble: tiny_cnn_d2 + tiny_cnn_d3"
    assert rows["teacher"]["params"] == rows["member0"]["params"] + rows["member1"]["params"]
    assert rows["teacher"]["macs"] >= rows["member0"]["macs"] + rows["member1"]["macs"]
    assert set(results["summary"]) == {"teacher", "baseline", "distilled"}
    assert row_label(rows["member1"], False) == "teacher member (tiny_cnn_d3)"
    for index in (0, 1):
        meta = json.loads((out / "teacher" / f"member{index}" / "model.json").read_text())
        assert meta["role"] == "member" and meta["threshold"] is not None  # calibrated on validation
    assert json.loads((out / "teacher" / "member1" / "model.json").read_text())["training"]["epochs"] == 1
    ensemble, meta = load_checkpoint(out / "teacher")
    assert meta["training"]["members"] == ["member0", "member1"]
    member, _ = load_checkpoint(out / "teacher" / "member1")
    inside = ensemble.members[1].state_dict()
    assert all(torch.equal(tensor, inside[key]) for key, tensor in member.state_dict().items())
    report = (out / "report.md").read_text()
    assert "teacher member (tiny_cnn_d2)" in report and "ensemble: tiny_cnn_d2 + tiny_cnn_d3" in report
    capsys.readouterr()
    assert main(["run", str(path), "--resume"]) == 0
    log = capsys.readouterr().err
    assert "teacher/member0: already trained" in log and "teacher/member1: already trained" in log


def test_the_frozen_ensemble_runs_in_onnx_runtime_as_one_graph():
    """The teacher's inference passes (table, battery, evaluation) take the whole ensemble, members
    and their mean, through one ONNX Runtime session, matching PyTorch."""
    from conftest import require_or_skip

    require_or_skip("onnxruntime")
    from kdistill.deploy.runner import onnx_runner

    ensemble = Ensemble([_member(4), _member(6)]).eval().requires_grad_(False)
    run = onnx_runner(ensemble, channels=3, input_size=16, threads=1, what="ensemble")
    assert run is not None
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(run(images), ensemble(images), atol=1e-5)
