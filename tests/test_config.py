"""Config: YAML + key=value overrides, validated; the values a user naturally writes are accepted."""

from __future__ import annotations

import pytest

from conftest import tiny_config, write_config
from kdistill.cli import main
from kdistill.config import from_dict, load_config
from kdistill.errors import ConfigError

ROOT = ["data.root=/data"]


def test_overrides_reach_nested_keys_with_their_types():
    """a.b.c=value sets the nested field, parsed to the declared type (ints accepted as floats)."""
    config = load_config(None, ROOT + ["student.train.epochs=7", "teacher.train.lr=2",
                                       "teacher.mode=head", "distill.teacher_cache=false"])
    assert config.student.train.epochs == 7
    assert config.teacher.train.lr == 2.0 and isinstance(config.teacher.train.lr, float)
    assert config.teacher.mode == "head" and config.distill.teacher_cache is False


def test_from_dict_rejects_unknown_section_key():
    """Unknown keys are errors at every level, named with their full dotted path."""
    with pytest.raises(ConfigError, match=r"^distill\.temprature: unknown key"):
        from_dict({"data": {"root": "/data"}, "distill": {"temprature": 2}})


def test_root_and_dataset_are_exclusive():
    """Exactly one data source."""
    with pytest.raises(ConfigError, match="data.root / data.dataset"):
        load_config(None, ["data.root=/data", "data.dataset=digits"])


def test_scientific_notation_learning_rate():
    """lr=1e-3 is how learning rates are usually written, in YAML files and on the command line."""
    config = load_config(None, ROOT + ["student.train.lr=1e-3", "teacher.train.weight_decay=5e-5"])
    assert config.student.train.lr == pytest.approx(1e-3)
    assert config.teacher.train.weight_decay == pytest.approx(5e-5)


@pytest.mark.parametrize("value", ["true", "3.0"])
def test_channels_must_be_the_integer_1_or_3(value):
    """data.channels=true is a typo, not 1 channel."""
    with pytest.raises(ConfigError, match="data.channels"):
        load_config(None, ROOT + [f"data.channels={value}"])


def test_numeric_output_folder_name(image_root, tmp_path, capsys, monkeypatch):
    """`--out 2024` names a folder; it must not be refused because it looks like a number."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "config.yaml", tiny_config(image_root, tmp_path / "out"))
    code = main(["train", str(config), "--role", "baseline", "--out", "2024"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "2024" / "baseline" / "model.json").is_file()


def test_unquoted_off_in_a_yaml_file_is_the_word_off(tmp_path):
    # YAML 1.1 reads `off` as False; a choice of words must still get "off", not a type error.
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  dataset: digits\nstudent:\n  fast_path: off\n")
    assert load_config(path).student.fast_path == "off"
    path.write_text("data:\n  dataset: digits\nstudent:\n  fast_path: yes\n")
    with pytest.raises(ConfigError, match="student.fast_path"):
        load_config(path)
