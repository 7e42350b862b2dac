"""The worked examples of docs/extending.md run as written and do what the text says they do.

Each ```python block preceded by ``<!-- test: NAME -->`` is executed; the registries the examples
add to are global dictionaries, so every test restores them afterwards.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdistill.distill.losses as losses
from kdistill.data import Batch
from kdistill.distill import METHODS, build_method
from kdistill.distill.registry import check_params
from kdistill.errors import ConfigError
from kdistill.models import available_models, build_model, find_head
from kdistill.models.students import STUDENTS

EXTENDING_DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
MARKED_BLOCK = re.compile(r"<!-- test: ([\w-]+) -->\s*\n```python\n(.*?)```", re.DOTALL)
EXPECTED_BLOCKS = {"method-loss", "method", "method-check", "student", "student-check", "data", "data-check"}


def doc_blocks() -> dict[str, str]:
    """``{name: code}`` of the marked Python blocks of docs/extending.md."""
    return dict(MARKED_BLOCK.findall(EXTENDING_DOC.read_text()))


def run_block(name: str) -> dict:
    """Execute one block in a fresh namespace (as its own module would be) and return it."""
    code = compile(doc_blocks()[name], f"docs/extending.md:{name}", "exec")
    namespace: dict = {"__name__": f"extending_{name.replace('-', '_')}"}
    exec(code, namespace)
    return namespace


@pytest.fixture
def restore_registries():
    """Whatever the examples register is removed again, so other tests see the stock registries."""
    methods, students = dict(METHODS), dict(STUDENTS)
    yield
    METHODS.clear()
    METHODS.update(methods)
    STUDENTS.clear()
    STUDENTS.update(students)


def test_every_example_block_is_marked():
    """A renamed or unmarked block would silently stop being run."""
    assert set(doc_blocks()) == EXPECTED_BLOCKS


def tiny_batch(batch_size: int = 8, classes: int = 3) -> Batch:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, 8, 8, generator=generator)
    labels = torch.randint(0, classes, (batch_size,), generator=generator)
    return Batch(images, labels, torch.arange(batch_size), torch.zeros(batch_size, dtype=torch.bool))


def install_loss_block(monkeypatch) -> list[str]:
    """Add the functions of the ``method-loss`` block to kdistill.distill.losses, as the text says."""
    namespace = run_block("method-loss")
    added = [name for name, value in namespace.items()
             if inspect.isfunction(value) and value.__code__.co_filename.endswith(":method-loss")]
    for name in added:
        monkeypatch.setattr(losses, name, namespace[name], raising=False)
    return added


def test_method_example_registers_a_working_method(monkeypatch, restore_registries):
    """build_method finds the new method with the pipeline's arguments; its loss is finite, trains
    the student, and is exactly KD with PyTorch's label-smoothed cross-entropy."""
    assert install_loss_block(monkeypatch) == ["uniform_target_loss"]
    run_block("method")
    checked = run_block("method-check")
    assert torch.isfinite(checked["out"]["loss"])
    assert all(p.grad is not None for p in checked["student"].parameters())

    batch, student = tiny_batch(), nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    teacher_logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    teacher = lambda b: teacher_logits[b.index]  # noqa: E731
    alpha, temperature, smoothing = 0.3, 2.0, 0.2
    method = build_method("kd_smooth", alpha=alpha, temperature=temperature, class_weights=None,
                          smoothing=smoothing)
    out = method(batch, student, teacher)
    logits = student(batch.images)
    expected = ((1 - alpha) * F.cross_entropy(logits, batch.labels, label_smoothing=smoothing)
                + alpha * losses.kd_loss(logits, teacher_logits, temperature))
    torch.testing.assert_close(out["loss"], expected)
    assert out["logits"].shape == (8, 3)
    assert method.record() == {"alpha": alpha, "temperature": temperature, "params": {"smoothing": smoothing}}

    unsmoothed = build_method("kd_smooth", alpha=alpha, temperature=temperature, smoothing=0.0)
    plain_kd = build_method("kd", alpha=alpha, temperature=temperature)
    torch.testing.assert_close(unsmoothed(batch, student, teacher)["loss"],
                               plain_kd(batch, student, teacher)["loss"])
    with pytest.raises(ConfigError, match=r"distill.params.kd_smooth.smoothing: 1.0 must be in \[0, 1\)"):
        check_params("kd_smooth", {"smoothing": 1.0})


def test_a_new_logit_method_touches_two_files(tmp_path):
    """As the text says: in a copy of the package, the loss appended to losses.py and the method
    written to its own file are all it takes for a run's config to accept the method by name and
    for the registry to answer for it; no other file is edited."""
    package = Path(__file__).resolve().parents[1] / "kdistill"
    copy = tmp_path / "kdistill"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    losses_file = copy / "distill" / "losses.py"
    losses_file.write_text(losses_file.read_text() + "\n\n" + doc_blocks()["method-loss"])
    (copy / "distill" / "kd_smooth.py").write_text(doc_blocks()["method"])
    changed = sorted(str(path.relative_to(copy)) for path in copy.rglob("*.py")
                     if not (package / path.relative_to(copy)).is_file()
                     or (package / path.relative_to(copy)).read_bytes() != path.read_bytes())
    assert changed == ["distill/kd_smooth.py", "distill/losses.py"]
    check = ("from kdistill.config import load_config\n"
             "from kdistill.distill.registry import search_space, shared_keys\n"
             "config = load_config(None, ['data.dataset=digits', 'distill.method=kd_smooth',"
             " 'distill.params.kd_smooth.smoothing=0.2'])\n"
             "assert config.distill.params['kd_smooth'] == {'smoothing': 0.2}\n"
             "assert shared_keys('kd_smooth') == ('alpha', 'temperature') and 'smoothing' in search_space('kd_smooth')\n")
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_student_example_builds_by_name(restore_registries):
    """The new student is found by name, listed, sized for the data, and its head is found."""
    run_block("student")
    checked = run_block("student-check")
    assert tuple(checked["logits"].shape) == (4, 2)
    assert "separable_student" in available_models()
    model = build_model("separable_student", num_classes=5, input_size=20, in_channels=1, width=4)
    assert model(torch.randn(3, 1, 20, 20)).shape == (3, 5)
    _, head = find_head(model)
    assert head.out_features == 5


def test_data_example_yields_batches(tmp_path, monkeypatch):
    """The exported folder loads as a dataset with both classes in every split, and yields
    normalized batches of the requested size."""
    monkeypatch.chdir(tmp_path)
    run_block("data")
    assert sorted(p.name for p in (tmp_path / "my_data" / "train").iterdir()) == ["negative", "positive"]
    checked = run_block("data-check")
    data, batch = checked["data"], checked["batch"]
    assert data.classes == ["negative", "positive"]
    assert len(data.train) + len(data.val) + len(data.test) == 80
    assert all(min(split.class_counts(2)) > 0 for split in (data.train, data.val, data.test))
    assert batch.images.shape == (16, 3, 32, 32) and batch.images.dtype == torch.float32
    assert set(batch.labels.tolist()) <= {0, 1}


def test_registries_are_clean_after_the_examples():
    """Runs after the examples (file order): nothing they registered is left behind."""
    assert "kd_smooth" not in METHODS and "separable_student" not in STUDENTS
    assert not hasattr(losses, "uniform_target_loss")
