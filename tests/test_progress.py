"""Progress lines of the long phases: a count and an ETA on stderr, never on stdout, and none when
``progress`` is off or the phase is short."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import make_image_folder
from kdistill import log as log_module
from kdistill.data.cache import decode_to_storage
from kdistill.data.imagefiles import find_images
from kdistill.deploy.profile import time_interleaved


@pytest.fixture
def progress_at_once(monkeypatch):
    """Progress on, as the CLI sets it, drawn at every update instead of after seconds."""
    monkeypatch.setattr(log_module, "PROGRESS_DELAY_S", 0.0)
    monkeypatch.setattr(log_module, "PROGRESS_EVERY_S", {"terminal": 0.0, "file": 0.0})
    logging.getLogger("kdistill").setLevel(logging.INFO)
    log_module.show_progress(True)


def image_files(tmp_path, per_class: int = 6):
    root = make_image_folder(tmp_path / "data", per_class=per_class, size=8, splits=("train",))
    return find_images([root])[0]


def test_decoding_shows_a_count_and_an_eta_on_stderr(tmp_path, capsys, progress_at_once, monkeypatch):
    monkeypatch.setattr("kdistill.data.cache.CHUNK", 4)
    files = image_files(tmp_path)
    images, kept, bad = decode_to_storage(files, 8, 1, "skip", "decoding train")
    assert len(kept) == len(files) == 12 and not bad
    printed = capsys.readouterr()
    assert printed.out == ""
    assert "decoding train" in printed.err and "4/12" in printed.err and "<" in printed.err  # elapsed<left


def test_counted_steps_by_the_rows_of_each_batch(capsys, progress_at_once):
    counted = log_module.Counted(lambda batch: batch * 2, total=10, what="teacher table")
    for rows in (4, 4, 2):
        counted(torch.ones(rows, 3))
    err = capsys.readouterr().err
    assert "teacher table" in err and "4/10" in err and "8/10" in err
    assert counted.bar.n == 10


def test_speed_timing_ticks_once_per_round():
    ticks = []
    time_interleaved({"a": lambda: None, "b": lambda: None}, rounds=5, min_round_s=0.0, warmup=0,
                     tick=lambda: ticks.append(1))
    assert len(ticks) == 5


def test_progress_off_or_a_quiet_logger_shows_nothing(tmp_path, capsys, progress_at_once):
    files = image_files(tmp_path, per_class=2)
    log_module.show_progress(False)  # config progress: false
    decode_to_storage(files, 8, 1, "skip", "decoding train")
    assert capsys.readouterr().err == ""
    log_module.show_progress(True)
    logging.getLogger("kdistill").setLevel(logging.WARNING)  # a torchrun rank other than 0
    decode_to_storage(files, 8, 1, "skip", "decoding train")
    assert capsys.readouterr().err == ""


def test_a_short_phase_stays_silent(tmp_path, capsys):
    """The default delay: a phase that ends within seconds prints no progress line at all."""
    logging.getLogger("kdistill").setLevel(logging.INFO)
    log_module.show_progress(True)
    decode_to_storage(image_files(tmp_path, per_class=2), 8, 1, "skip", "decoding train")
    assert capsys.readouterr().err == ""
