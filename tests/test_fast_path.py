"""The reference student's CPU fast path is fenced: ``fast_path: off`` and hooks get its own modules.

``off`` runs conv -> BatchNorm -> ReLU -> pool -> classifier as PyTorch modules and the training
loop never feeds it pixel blocks; in training mode it computes what the fast path computes, up to
float rounding. With ``auto``, a hook on any module the fast path bypasses switches it back to the
modules by itself, so the hook fires.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdistill.models.reference.student as reference
from conftest import tiny_config, write_config
from kdistill.config import TrainConfig, load_config
from kdistill.data import DatasetBundle, ImageSplit
from kdistill.data.transforms import normalization, to_model_input
from kdistill.distill import build_method
from kdistill.engine.loop import fit, training_input
from kdistill.models import build_model
from kdistill.models.checkpoint import architecture
from kdistill.models.fast_path import set_fast_path
from kdistill.models.reference.pixel_blocks import BlockImages, to_blocks
from kdistill.pipeline import train_one

SIZE = 16


def _student(mode: str = "auto", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return set_fast_path(build_model("reference_student", 3, input_size=SIZE), mode).train()


def _raw(count: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 1, SIZE, SIZE), dtype=torch.uint8, generator=generator)


def _images(raw: torch.Tensor) -> torch.Tensor:
    """Normalized channels-last batch, as the training loop makes it."""
    mean, std = normalization(3)
    return to_model_input(raw, 3, mean, std).contiguous(memory_format=torch.channels_last)


def _blocks(raw: torch.Tensor) -> BlockImages:
    mean, std = normalization(3)
    return to_blocks(raw, 3, mean, std)


@pytest.fixture
def fast_path_calls(monkeypatch) -> list[str]:
    """Names of the fast-path functions the student calls (spies, not hooks: a hook would itself
    switch the path)."""
    calls = []
    for name in ("bn_relu_maxpool2", "bn_relu_maxpool2_blocks", "block_conv"):
        real = getattr(reference, name)
        monkeypatch.setattr(reference, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    return calls


def _count_calls(module: nn.Module) -> list[tuple]:
    seen = []
    module.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    return seen


# --- (a) fast_path: off ---------------------------------------------------------------------

def test_a_batchnorm_hook_fires_with_fast_path_off():
    model = _student("off")
    seen = _count_calls(model.features[1])
    model(_images(_raw()))
    model(_blocks(_raw()))  # blocks handed in anyway are turned into images first
    model.eval()(_images(_raw()))
    assert seen == [(6, 4, SIZE, SIZE)] * 3


def test_off_runs_the_modules_and_never_the_fast_path(fast_path_calls):
    model = _student("off")
    model(_images(_raw()))
    model(_blocks(_raw()))
    assert fast_path_calls == []
    _student("auto")(_images(_raw()))  # the spies see the fast path when it runs
    assert fast_path_calls == ["bn_relu_maxpool2"]


@pytest.mark.parametrize("auto_input", [_images, _blocks])
def test_off_trains_like_auto_in_float32(auto_input):
    """Three SGD steps on CPU float32 in training mode: logits, gradients and BatchNorm buffers of
    ``off`` equal those of ``auto`` (fused step, or block path on blocks) up to float rounding."""
    off, auto = _student("off"), _student("auto")
    opt_off, opt_auto = (torch.optim.SGD(m.parameters(), lr=0.05) for m in (off, auto))
    labels = torch.arange(6) % 3
    for step in range(3):
        raw = _raw(seed=step)
        pairs = {"logits": (off(_images(raw)), auto(auto_input(raw)))}
        for logits, opt in zip(pairs["logits"], (opt_off, opt_auto)):
            opt.zero_grad()
            F.cross_entropy(logits, labels).backward()
        for (name, p), q in zip(off.named_parameters(), auto.parameters()):
            if name != "features.0.bias":  # exact gradient 0 (BatchNorm follows): rounding noise only
                pairs[name + ".grad"] = (p.grad, q.grad)
        pairs.update({k: (v, auto.state_dict()[k]) for k, v in off.state_dict().items() if "running" in k})
        for name, (a, b) in pairs.items():
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * a.abs().max().item()), (step, name)
        opt_off.step()
        opt_auto.step()


def test_set_fast_path_checks_the_mode_and_leaves_other_models_alone():
    tiny = build_model("tiny_cnn_d2", 2)
    assert set_fast_path(tiny, "off") is tiny and not hasattr(tiny, "fast_path")
    with pytest.raises(ValueError, match="student.fast_path"):
        set_fast_path(_student(), "fast")


# --- (b) the training loop ------------------------------------------------------------------

def _bundle() -> DatasetBundle:
    labels = torch.tensor([0, 1, 2] * 4)
    split = ImageSplit(_raw(12), labels, [str(i) for i in range(12)], [str(i) for i in range(12)])
    return DatasetBundle(["a", "b", "c"], None, split, split, split, SIZE, 3)


def _inputs_seen_in_fit(model: nn.Module, tmp_path) -> list[type]:
    seen = []
    ce = build_method("ce")

    def recording(batch, student, teacher):
        seen.append(type(batch.images))
        return ce(batch, student, teacher)

    meta = {"architecture": architecture("reference_student", 3, SIZE, 3, {})}
    fit(model, recording, _bundle(), name="student", checkpoint_dir=tmp_path / "ckpt", checkpoint_meta=meta,
        resume_dir=tmp_path / "resume", train=TrainConfig(epochs=1, batch_size=4), progress=False)
    return seen


def test_b_loop_feeds_no_blocks_when_off(tmp_path):
    assert training_input(_student("off"), None, _bundle()) is None
    assert set(_inputs_seen_in_fit(_student("off"), tmp_path / "off")) == {torch.Tensor}
    assert set(_inputs_seen_in_fit(_student("auto"), tmp_path / "auto")) == {BlockImages}


def test_pipeline_passes_the_switch(image_root, tmp_path, monkeypatch):
    switches = []
    real_fit = fit
    monkeypatch.setattr("kdistill.pipeline.fit", lambda model, *a, **k: switches.append(model.fast_path)
                        or real_fit(model, *a, **k))
    path = write_config(tmp_path / "config.yaml", tiny_config(image_root, tmp_path / "out"))
    train_one(load_config(path, ["student.fast_path=off", "student.train.epochs=1"]), "baseline")
    train_one(load_config(path, ["student.train.epochs=1", f"out={tmp_path / 'auto'}"]), "baseline")
    assert switches == [False, True]


# --- (c) hooks switch the fast path off by themselves ---------------------------------------------

@pytest.mark.parametrize("path", ["features.1", "features.2", "features.3", "features"])
def test_c_hook_on_a_bypassed_module_fires_with_fast_path_auto(path, fast_path_calls):
    model, plain = _student("auto"), _student("auto")
    seen = _count_calls(model.get_submodule(path))
    for make in (_images, _blocks):
        assert torch.allclose(model(make(_raw())), plain(make(_raw())), rtol=1e-4, atol=1e-6)
    assert len(seen) == 2
    assert fast_path_calls == ["bn_relu_maxpool2", "block_conv", "bn_relu_maxpool2_blocks"]  # plain's only


def test_hook_on_the_convolution_keeps_blocks_away():
    model = _student("auto")
    seen = []
    model.features[0].register_forward_pre_hook(lambda m, args: seen.append(type(args[0])))
    model(_blocks(_raw()))
    assert seen == [torch.Tensor]


def test_the_fast_path_returns_once_the_hook_is_removed(fast_path_calls):
    model = _student("auto")
    handle = model.features[1].register_forward_hook(lambda m, args, out: None)
    model(_images(_raw()))
    assert fast_path_calls == []
    handle.remove()
    model(_images(_raw()))
    assert fast_path_calls == ["bn_relu_maxpool2"]


def test_loop_with_a_hooked_student_feeds_images_and_the_hook_fires(tmp_path):
    model = _student("auto")
    seen = _count_calls(model.features[1])
    assert training_input(model, None, _bundle()) is None
    assert set(_inputs_seen_in_fit(model, tmp_path)) == {torch.Tensor}
    assert len(seen) >= 3  # every training step (12 images, batch 4), plus validation
