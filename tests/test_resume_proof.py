"""`kdistill run --resume` continues from the saved state instead of training again from scratch.

Training is deterministic, so equal weights cannot tell resuming from restarting; what can is the
log ("resuming after epoch 2") and which epochs were trained after the restart (only 3 and 4)."""

from __future__ import annotations

import inspect
import json
import re

import pytest

import kdistill.engine.loop as loop
from conftest import tiny_config, write_config
from kdistill.cli import main

EPOCHS = 4
INTERRUPT_AT = 3  # the run dies at the start of distilled epoch 3: epochs 1-2 are saved


class Killed(KeyboardInterrupt):
    """Stands for Ctrl-C or a killed job."""


def spy_on_epochs(monkeypatch, fail_at: tuple[str, int] | None = None) -> list[tuple[str, int]]:
    """Record (model name, epoch) of every epoch trained; raise Killed at ``fail_at``."""
    real = loop.train_one_epoch
    signature = inspect.signature(real)
    trained = []

    def spy(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        if (bound["name"], bound["epoch"]) == fail_at:
            raise Killed()
        trained.append((bound["name"], bound["epoch"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", spy)
    return trained


@pytest.mark.slow
def test_resume_trains_only_the_remaining_epochs(image_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    config = tiny_config(image_root, out, student={"train": {"epochs": EPOCHS, "batch_size": 8, "lr": 0.01}})
    config["export"] = False
    config_file = write_config(tmp_path / "config.yaml", config)

    with monkeypatch.context() as patch:
        before = spy_on_epochs(patch, fail_at=("distilled", INTERRUPT_AT))
        assert main(["run", str(config_file)]) == 130
    assert [e for name, e in before if name == "distilled"] == [1, 2]
    capsys.readouterr()

    after = spy_on_epochs(monkeypatch)
    assert main(["run", str(config_file), "--resume"]) == 0
    log = capsys.readouterr().err
    assert after == [("distilled", 3), ("distilled", 4)]  # teacher and baseline reused, 1-2 not redone
    assert re.search(r"distilled: resuming after epoch 2\b", log), log
    assert re.findall(r"^distilled epoch (\d+)/4:", log, flags=re.MULTILINE) == ["3", "4"]
    saved = json.loads((out / "distilled" / "model.json").read_text())
    assert [record["epoch"] for record in saved["history"]] == [1, 2, 3, 4]  # the saved epochs kept
