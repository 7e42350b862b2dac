"""Distillation methods through the method contract: each method's loss is its pure loss combined
as its file documents; feature hooks reach unmodified models; a method's own parameters train,
resume and stay out of the checkpoint; DKD's warm-up; config and registry checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file
from torch import nn

from kdistill.config import DataConfig, TrainConfig, load_config
from kdistill.data import Batch
from kdistill.distill import FeatureTeacher, build_method
from kdistill.distill import losses
from kdistill.distill.hooks import default_layers, embedding_path
from kdistill.distill.registry import check_params, distilling_methods, search_space, shared_keys, two_class_note
from kdistill.errors import ConfigError
from kdistill.models import build_model

LOGIT_METHODS = ("dkd", "dist", "ls")
FEATURE_METHODS = ("fitnet", "at", "rkd")


def tiny_batch(classes: int = 3, size: int = 32, batch: int = 6) -> Batch:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.arange(batch) % classes
    return Batch(images, labels, torch.arange(batch), torch.zeros(batch, dtype=torch.bool))


def fixed_teacher(logits: torch.Tensor):
    return lambda batch: logits[batch.index]


@pytest.fixture
def student():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))


def test_every_method_is_registered_with_its_declarations():
    assert set(LOGIT_METHODS + FEATURE_METHODS + ("kd", "article")) <= set(distilling_methods())
    assert "ce" not in distilling_methods()
    assert set(search_space("dkd")) == {"beta", "temperature"}
    for name in ("dkd", "ls", "dist"):
        assert two_class_note(name, 2)
        assert two_class_note(name, 10) is None
    assert two_class_note("fitnet", 2) is None


def test_logit_methods_equal_their_pure_losses_as_documented(student):
    batch = tiny_batch()
    teacher_logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    logits = student(batch.images)
    ce = F.cross_entropy(logits, batch.labels)
    expected = {
        # DKD: CE + min(epoch / warmup, 1) * dkd_loss; epoch 1 of a 20-epoch warm-up.
        "dkd": ce + (1 / 20) * losses.dkd_loss(logits, teacher_logits, batch.labels, 1.0, 8.0, 4.0),
        "dist": ce + 2.0 * losses.dist_loss(logits, teacher_logits, 1.0, 1.0, 1.0),
        "ls": 0.1 * ce + 9.0 * losses.kd_loss(logits, teacher_logits, 2.0, standardize=True),
    }
    for name, value in expected.items():
        out = build_method(name)(batch, student, fixed_teacher(teacher_logits))
        assert torch.allclose(out["loss"], value, atol=1e-6), name
        assert torch.equal(out["logits"], logits.detach())


def test_ls_hand_checked_value():
    """Two classes: standardized logits are +-1/sqrt(2) whatever the scale, so KD at T=2 between
    [+a, -a] (student) and [-a, +a] (teacher), a = 1/sqrt(2), is worked out by hand."""
    a = 1 / math.sqrt(2)
    student_logits, teacher_logits = torch.tensor([[3.0, 1.0]]), torch.tensor([[0.0, 5.0]])
    p_t = torch.softmax(torch.tensor([-a, a]) / 2, 0)
    p_s = torch.softmax(torch.tensor([a, -a]) / 2, 0)
    by_hand = float((p_t * (p_t / p_s).log()).sum()) * 4  # KL(t || s) * T**2
    assert losses.kd_loss(student_logits, teacher_logits, 2.0, standardize=True).item() == pytest.approx(by_hand, abs=1e-6)


def test_dkd_warm_up_follows_the_epoch(student):
    batch = tiny_batch()
    teacher_logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    method = build_method("dkd", warmup=4)
    terms = []
    for epoch in (1, 2, 4, 8):
        method.set_epoch(epoch)
        out = method(batch, student, fixed_teacher(teacher_logits))
        terms.append(((out["loss"] - out["ce"]) / out["dkd"]).item())
    assert terms == pytest.approx([0.25, 0.5, 1.0, 1.0])


def test_feature_hooks_reach_torchvision_resnet_and_the_reference_student():
    example = torch.zeros(1, 3, 64, 64)
    resnet = torchvision.models.resnet18(num_classes=3)
    assert default_layers(resnet, example) == ["layer3", "layer4"]
    assert embedding_path(resnet) == "fc:input"
    reference = build_model("reference_student", 3, input_size=64)
    assert default_layers(reference, example) == ["features.2", "features.3"]
    assert embedding_path(reference) == "classifier:input"


def bound(name: str, **params):
    torch.manual_seed(0)
    student = build_model("reference_student", 3, input_size=32)
    teacher = FeatureTeacher(torchvision.models.resnet18(num_classes=3))
    method = build_method(name, **params)
    method.bind(student, teacher, torch.zeros(1, 3, 32, 32))
    return method, student, teacher


def test_feature_methods_equal_their_pure_losses(monkeypatch):
    batch = tiny_batch()
    for name in FEATURE_METHODS:
        method, student, teacher = bound(name)
        out = method(batch, student, teacher)
        out["loss"].backward()
        assert student.features[0].weight.grad is not None, name  # gradients reach the student
        # The same outputs taken directly: the student's stages by name, the teacher's likewise.
        s_out = dict(student.named_modules())
        with torch.no_grad():
            x = batch.images
            conv, relu_out = s_out["features.0"](x), None
            relu_out = s_out["features.2"](s_out["features.1"](conv))
            pooled = s_out["features.3"](relu_out)
            logits = student.classifier(pooled.flatten(1))
            ce = F.cross_entropy(logits, batch.labels)
            t = teacher.model
            h = t.maxpool(t.relu(t.bn1(t.conv1(x))))
            l1 = t.layer1(h); l2 = t.layer2(l1); l3 = t.layer3(l2)
            embedding = torch.flatten(t.avgpool(t.layer4(l3)), 1)
        if name == "fitnet":  # at 32x32 the teacher's two smallest stages above 1x1 are layer2, layer3
            assert method.teacher_paths == ["layer2"] and method.student_paths == ["features.2"]
            regressed = method.regressor(losses.resize_map(relu_out, tuple(l2.shape[-2:])))
            expected = ce + 100.0 * losses.hint_loss(regressed, l2)
        elif name == "at":
            expected = ce + losses.attention_transfer_loss([relu_out, pooled], [l2, l3], 1000.0)
        else:
            expected = ce + losses.rkd_loss(pooled.flatten(1), embedding, 25.0, 50.0)
        assert torch.allclose(out["loss"].detach(), expected, rtol=1e-5, atol=1e-5), name


def test_attention_transfer_loss_hand_checked():
    """Q_s = [1, 4, 0, 0] / sqrt(17), Q_t = [0, 0, 1, 4] / sqrt(17): mean squared difference
    34 / 17 / 4 = 0.5, times beta (the authors' code: beta * mean, no half)."""
    student = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]]]])
    teacher = torch.tensor([[[[0.0, 0.0], [1.0, 2.0]]]])
    assert losses.attention_transfer_loss([student], [teacher], 1000.0).item() == pytest.approx(500.0)


def test_attention_map_hand_checked():
    """One channel [[1, 2], [0, 0]]: energy |A|**2 = [1, 4, 0, 0], normalized by sqrt(17)."""
    features = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]]]])
    assert losses.attention_map(features)[0].tolist() == pytest.approx([1 / 17**0.5, 4 / 17**0.5, 0, 0])


def test_rkd_is_zero_for_a_scaled_copy_and_positive_otherwise():
    embedding = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert losses.rkd_loss(3 * embedding, embedding, 25.0, 50.0).item() == pytest.approx(0.0, abs=1e-5)
    assert losses.rkd_loss(embedding.flip(0) ** 2, embedding, 25.0, 50.0).item() > 1e-3


def test_fitnet_regressor_is_trained_resumed_and_never_exported(tmp_path, monkeypatch):
    import kdistill.engine.loop as loop
    from kdistill.data import load_dataset
    from kdistill.engine.loop import fit
    from kdistill.models.checkpoint import architecture

    data = load_dataset(DataConfig(dataset="digits", input_size=16, val_fraction=0.2, test_fraction=0.2,
                                   max_images_per_class=6, hflip=False, cache_dir=None))
    torch.manual_seed(0)
    student = build_model("reference_student", 10, input_size=16)
    teacher = FeatureTeacher(build_model("tiny_cnn_d2", 10, input_size=16, width=4))
    method = build_method("fitnet")
    method.bind(student, teacher, torch.zeros(1, 3, 16, 16))
    before = method.regressor.weight.detach().clone()
    resume_dir = tmp_path / "resume"
    kwargs = dict(name="distilled-fitnet", checkpoint_dir=tmp_path / "ckpt", checkpoint_meta={"architecture": architecture("reference_student", 10, 16, 3, {})},
                  resume_dir=resume_dir, teacher=teacher, progress=False)
    # One epoch of two, then stop: the resume state holds the regressor.
    saved = {}
    original = loop.save_train_state

    def keep_state(*args, **kw):
        original(*args, **kw)
        saved.update(load_file(str(resume_dir / "method.safetensors")))

    monkeypatch.setattr(loop, "save_train_state", keep_state)
    fit(student, method, data, train=TrainConfig(epochs=1, batch_size=8, lr=0.01), **kwargs)
    assert not torch.equal(method.regressor.weight.detach(), before)  # optimized with the student
    assert torch.equal(saved["regressor.weight"], method.regressor.weight.detach())
    exported = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert not any("regressor" in key for key in exported)
    assert set(exported) == set(student.state_dict())


def test_resume_restores_the_method_parameters(tmp_path):
    from kdistill.engine.loop import build_optimizer, build_schedule
    from kdistill.engine.resume import TrainState, load_train_state, save_train_state
    from kdistill.engine.precision import grad_scaler

    method, student, _ = bound("fitnet")
    params = list(student.parameters()) + list(method.parameters())
    opt = build_optimizer("adamw", params, 1e-3, 0.0)
    sched = build_schedule("cosine", opt, 10)
    scaler = grad_scaler(torch.device("cpu"), "fp32")
    state = TrainState([], 1, 0.5, {k: v.clone() for k, v in student.state_dict().items()},
                       dict(method.state_dict()))
    save_train_state(tmp_path / "r", student, opt, sched, scaler, state)
    saved = method.regressor.weight.detach().clone()
    with torch.no_grad():
        method.regressor.weight.add_(1.0)
    load_train_state(tmp_path / "r", student, opt, sched, scaler, method)
    assert torch.equal(method.regressor.weight.detach(), saved)


def test_config_rejects_unknown_methods_and_parameters_naming_the_key():
    base = ["data.dataset=digits"]
    cases = {"distill.method=nope": "distill.method:", "distill.methods=[kd,nope]": "distill.methods[1]:",
             "distill.params.dkd.gamma=1": "distill.params.dkd.gamma:",
             "distill.params.dist.weight=-2": "distill.params.dist.weight:",
             "distill.params.nope.x=1": "distill.params.nope:"}
    for override, key in cases.items():
        with pytest.raises(ConfigError) as error:
            load_config(None, [*base, override])
        assert str(error.value).startswith(key) and "\n" not in str(error.value), override
    config = load_config(None, [*base, "distill.methods=[kd,dkd]", "distill.params.dkd.beta=2"])
    assert config.distill.params["dkd"]["beta"] == 2 and config.distill.params["dkd"]["warmup"] == 20
    assert check_params("at", {})["beta"] == 1000.0


def test_tune_searches_the_methods_own_parameters():
    from kdistill.tune import search_for, with_values

    kd = load_config(None, ["data.dataset=digits"])
    assert set(search_for(kd)) == {"alpha", "temperature", "lr"}
    dkd = load_config(None, ["data.dataset=digits", "distill.method=dkd"])
    space = search_for(dkd)
    assert space["beta"] == ("distill.params.dkd.beta", 1.0, 16.0, True) and "alpha" not in space
    tried = with_values(dkd, {"beta": 3.0, "temperature": 2.0, "lr": 1e-3}, space)
    assert tried.distill.params["dkd"] == {"beta": 3.0, "temperature": 2.0}
    assert tried.student.train.lr == 1e-3 and tried.distill.temperature == dkd.distill.temperature


def _partly_labelled_mixed_batch() -> Batch:
    """Six rows: two unlabelled (-1), two mixed with a partner's label at lambda 0.3."""
    batch = tiny_batch()
    batch.labels = torch.tensor([0, -1, 2, -1, 1, 0])
    batch.labeled = batch.labels >= 0
    batch.mix_lambda = torch.tensor([1.0, 1.0, 0.3, 1.0, 0.3, 1.0])
    batch.partner_labels = torch.tensor([0, 0, 1, 0, 2, 0])
    return batch


def test_every_method_has_one_contract_and_declares_what_it_takes():
    """One base for every method (the baseline included); the registry answers from declarations."""
    from kdistill.distill.method import DistillMethod
    from kdistill.distill.registry import BASELINE, METHODS, needs_of, takes_mixed, takes_unlabeled

    assert all(issubclass(cls, DistillMethod) for cls in METHODS.values())
    assert needs_of(BASELINE) == frozenset() and takes_mixed(BASELINE)
    assert takes_unlabeled("kd") and takes_mixed("kd")
    assert not takes_unlabeled("dkd") and not takes_mixed("dkd")  # its terms split classes at the label
    assert not takes_unlabeled("article") and not takes_mixed("article")  # the tutorial's recipe as written
    with pytest.raises(TypeError, match="must subclass"):
        from kdistill.distill.registry import register

        register("plain")(type("Plain", (), {"__call__": lambda self, batch, student, teacher: {}}))


@pytest.mark.parametrize("name", ["ce", "kd", "dist", "ls"])
def test_methods_that_take_unlabelled_and_mixed_rows_read_labels_only_in_the_base_cross_entropy(name, student):
    """On rows without a label and mixed views, the loss is finite and its cross-entropy is the
    base's (labelled rows, mixed targets): what the method's declarations promise."""
    from kdistill.distill.losses import labelled_cross_entropy

    batch = _partly_labelled_mixed_batch()
    teacher_logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    shared = {"alpha": 0.5, "temperature": 2.0}
    method = build_method(name, **{key: shared[key] for key in shared_keys(name)})
    out = method(batch, student, fixed_teacher(teacher_logits))
    logits = student(batch.images)
    expected = labelled_cross_entropy(logits, batch.labels, batch.labeled, mix_lambda=batch.mix_lambda,
                                      partner_labels=batch.partner_labels)
    assert torch.allclose(out["ce"], expected, atol=1e-6)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())


def test_mixed_views_are_refused_for_methods_that_read_the_hard_label(tmp_path):
    from kdistill.distill.inputs import check_methods_take_unlabeled

    root = ["data.dataset=digits", "data.augment.mix=mixup"]
    check_methods_take_unlabeled(load_config(None, root))  # kd takes them
    with pytest.raises(ConfigError, match="distill.method: dkd reads the hard label"):
        check_methods_take_unlabeled(load_config(None, [*root, "distill.method=dkd"]))


def test_no_module_outside_distill_names_a_method_or_computes_the_hard_label_term():
    """The registry answers for methods, and the base method owns the labelled-rows cross-entropy:
    no string literal outside kdistill/distill/ is a method's name, and no module builds
    ``F.cross_entropy(..., batch.labels)`` (which would count unlabelled rows and ignore mixing)."""
    import ast
    from pathlib import Path

    from kdistill.distill.registry import METHODS

    package = Path(__file__).resolve().parents[1] / "kdistill"
    named, hard_label = [], []
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in METHODS
                    and package / "distill" not in path.parents):
                named.append(f"{path.relative_to(package)}:{node.lineno} {node.value!r}")
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "cross_entropy"
                    and any(ast.unparse(arg) == "batch.labels" for arg in node.args)):
                hard_label.append(f"{path.relative_to(package)}:{node.lineno}")
    assert named == [] and hard_label == []
