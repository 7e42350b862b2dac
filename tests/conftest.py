"""Shared fixtures: tiny generated image folders, tiny configs, a clean kdistill logger per test."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "chest_xray"
CLASSES = ("NORMAL", "PNEUMONIA")


EXPECTED_SKIP = "expected skip: "  # the prefix of the only skip reasons CI accepts


def require_or_skip(module: str) -> ModuleType:
    """Import an optional extra; skip without it, except under KDISTILL_REQUIRE_EXTRAS=1 (CI),
    where a missing or broken extra must fail the tests that use it instead of hiding them."""
    if os.environ.get("KDISTILL_REQUIRE_EXTRAS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def require_real_data() -> Path:
    """The real chest X-ray folder; skip when absent, except under KDISTILL_REQUIRE_REAL_DATA=1
    (CI with ../shared beside the clone), where missing data fails instead."""
    if (REAL_DATA / "train").is_dir():
        return REAL_DATA
    reason = f"real chest X-ray data not found at {REAL_DATA} (expected ../shared/data/chest_xray)"
    if os.environ.get("KDISTILL_REQUIRE_REAL_DATA") == "1":
        pytest.fail(f"{reason}, and KDISTILL_REQUIRE_REAL_DATA=1 requires it")
    pytest.skip(EXPECTED_SKIP + reason)


def real_train_files() -> tuple[list[Path], list[int]]:
    """The real ``train/`` JPEGs (NORMAL, then PNEUMONIA, each sorted) and their labels 0/1."""
    train = require_real_data() / "train"
    paths, labels = [], []
    for label, name in enumerate(["NORMAL", "PNEUMONIA"]):
        files = sorted((train / name).glob("*.jpeg"))
        paths += files
        labels += [label] * len(files)
    return paths, labels


_unexpected_skips: list[str] = []


def _note_skip(report) -> None:
    """Remember a skip whose reason does not start with EXPECTED_SKIP."""
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if report.skipped and EXPECTED_SKIP not in reason:
        _unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report):
    _note_skip(report)


def pytest_collectreport(report):
    _note_skip(report)  # a module-level skip (e.g. an optional import) skips at collection


def pytest_sessionfinish(session, exitstatus):
    """Under KDISTILL_FAIL_ON_UNEXPECTED_SKIP=1 (CI) any skip whose reason does not start with
    EXPECTED_SKIP fails the run: a test that silently stops running is a regression."""
    if os.environ.get("KDISTILL_FAIL_ON_UNEXPECTED_SKIP") != "1" or not _unexpected_skips:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"unexpected skips ({len(_unexpected_skips)}):", red=True)
        for line in _unexpected_skips:
            reporter.write_line(f"  {line}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def patient_file_name(label: int, patient: int, image: int, suffix: str = ".png") -> str:
    """Chest X-ray style names: NORMAL ``IM-0007-0002``, PNEUMONIA ``person7_bacteria_2``."""
    if label == 0:
        return f"IM-{patient:04d}-{image:04d}{suffix}"
    return f"person{patient}_bacteria_{image}{suffix}"


def make_image_folder(root: Path, *, per_class: int = 24, per_patient: int = 3, size: int = 16,
                      splits: tuple[str, ...] = ("train",), seed: int = 0) -> Path:
    """Write ``root/<split>/<class>/*.png``: class 0 dark, class 1 bright, so models can learn.

    Each split gets its own patient numbers, so supplied splits never share a patient.
    """
    rng = np.random.default_rng(seed)
    for split_index, split in enumerate(splits):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                patient = 1000 * split_index + i // per_patient
                base = 70 if label == 0 else 180
                pixels = np.clip(base + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / patient_file_name(label, patient, i))
    return root


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """2 classes x 24 grayscale 16x16 PNGs in ``train/``, 3 images per patient."""
    return make_image_folder(tmp_path / "data")


def tiny_config(root: Path, out: Path, **sections) -> dict:
    """A config dict for a run of a few seconds: tiny models, 16x16 images, 2 epochs."""
    config = {
        "data": {"root": str(root), "input_size": 16, "val_fraction": 0.25, "test_fraction": 0.25},
        # onnx_inference off: exporting each tiny teacher costs more than it saves (tests/test_runner.py)
        "teacher": {"model": "tiny_cnn_d2", "model_args": {"width": 4}, "pretrained": False,
                    "onnx_inference": False, "train": {"epochs": 2, "batch_size": 8, "lr": 0.01}},
        "student": {"model": "reference_student", "train": {"epochs": 2, "batch_size": 8, "lr": 0.01}},
        "distill": {"method": "kd", "alpha": 0.5, "temperature": 4.0},
        "profile": {"threads": 1, "repeats": 2, "throughput_batch": 4},
        "out": str(out),
        "progress": False,
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def leftover_temp_files(folder: Path) -> list[Path]:
    """Temporary names the atomic writers use (``.NAME.xxxx.tmp``); none may survive a run."""
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".old"))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Train on one thread. The tiny test models gain nothing from two, and when the 2 cores are
    shared with another job, two OpenMP threads spin-wait on each other: a ResNet-18 step measured
    11x slower with 2 threads than with 1 on this machine under load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def session_cache_dir(tmp_path_factory) -> Path:
    """Disk caches (decoded images, teacher outputs) never go to ~/.cache: this covers module- and
    session-scoped fixtures too, which run before any function-scoped fixture."""
    folder = tmp_path_factory.mktemp("kdistill_cache_session")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDISTILL_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def private_cache_dir(session_cache_dir, tmp_path_factory, monkeypatch) -> Path:
    """Each test gets its own cache folder, so what one test caches never serves another."""
    folder = tmp_path_factory.mktemp("kdistill_cache")
    monkeypatch.setenv("KDISTILL_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def fresh_kdistill_logger():
    """The CLI configures the ``kdistill`` logger once, binding it to the sys.stderr of that
    moment; reset it around every test so each test's ``capsys`` sees its own log lines."""
    log = logging.getLogger("kdistill")

    def reset():
        for handler in list(log.handlers):
            log.removeHandler(handler)
        log.propagate = True
        log.setLevel(logging.NOTSET)
        logging.getLogger("kdistill.progress").setLevel(logging.NOTSET)  # config.progress=false

    reset()
    yield
    reset()
