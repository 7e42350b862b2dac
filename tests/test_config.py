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


# ---------------------------------------------------------------- one place for each fact


def bounded_settings(section: type = None, prefix: str = ""):
    """``(dotted key, setting, bounds)`` of every setting that declares bounds."""
    import dataclasses
    import typing

    from kdistill.config import Config

    section = section or Config
    hints = typing.get_type_hints(section)
    for spec in dataclasses.fields(section):
        if dataclasses.is_dataclass(hints[spec.name]):
            yield from bounded_settings(hints[spec.name], f"{prefix}{spec.name}.")
        elif spec.metadata.get("bounds") is not None:
            yield prefix + spec.name, spec, spec.metadata["bounds"]


def outside(bounds) -> list[float]:
    """Values just outside each end of ``bounds`` (the end itself where it is open)."""
    values = []
    if bounds.low is not None:
        values.append(bounds.low if bounds.low_open else bounds.low - 1)
    if bounds.high is not None:
        values.append(bounds.high if bounds.high_open else bounds.high + 1)
    return values


def test_every_declared_bound_is_checked_and_documented():
    """Bounds are declared once, on the setting: loading refuses a value beyond either end with
    one line naming the key and the bound, and docs/config.md states the same bound."""
    from test_docs import documented_rows

    rows = documented_rows()
    checked = set()
    for key, spec, bounds in bounded_settings():
        assert str(bounds) in rows[key][0], (key, rows[key][0])
        is_list = "list of" in rows[key][0]
        for value in outside(bounds):
            if "int" in rows[key][0]:
                value = int(value)
            override = f"{key}=[{value},{value}]" if is_list else f"{key}={value}"
            with pytest.raises(ConfigError) as refused:
                load_config(None, [*ROOT, override])
            assert str(refused.value).startswith(key) and str(bounds) in str(refused.value), override
        checked.add(key)
    assert {"data.input_size", "distill.alpha", "distill.temperature", "student.train.lr", "tune.alpha",
            "search.widths", "data.augment.noise", "profile.repeats"} <= checked


def test_the_values_inside_the_bounds_load():
    config = load_config(None, [*ROOT, "data.input_size=8", "distill.alpha=0", "distill.alpha=1",
                                "data.val_fraction=0.49", "tune.alpha=[0,1]", "data.augment.noise=0.5"])
    assert config.data.input_size == 8 and config.distill.alpha == 1.0


def test_choices_come_from_the_modules_that_act_on_them():
    """The allowed words of a setting are the constants of the code that reads them, not copies."""
    import typing

    from kdistill.config import CalibrationConfig, Config, SearchConfig, StudentConfig
    from kdistill.eval.calibration import THRESHOLD_RULES
    from kdistill.models.family import FAMILY
    from kdistill.models.fast_path import FAST_PATH_MODES
    from kdistill.tune import SHARED_SEARCH, TUNED_KEYS

    assert typing.get_args(typing.get_type_hints(CalibrationConfig)["threshold_rule"]) == THRESHOLD_RULES
    assert typing.get_args(typing.get_type_hints(StudentConfig)["fast_path"]) == FAST_PATH_MODES
    family = typing.get_args(typing.get_args(typing.get_type_hints(SearchConfig)["models"])[0])
    assert family == tuple(FAMILY) and Config().search.models == list(FAMILY)
    assert set(TUNED_KEYS) == {key for key, _ in SHARED_SEARCH.values()}


def test_a_tuned_file_may_set_only_what_tune_searches(tmp_path):
    from kdistill.config import read_tuned
    from kdistill.tune import TUNED_KEYS

    best = tmp_path / "best.yaml"
    best.write_text("distill:\n  alpha: 0.3\n  params:\n    dkd:\n      beta: 4\nstudent:\n  train:\n    lr: 0.01\n")
    assert read_tuned(best) == {"distill.alpha": 0.3, "distill.params.dkd.beta": 4, "student.train.lr": 0.01}
    best.write_text("student:\n  train:\n    epochs: 3\n")
    with pytest.raises(ConfigError, match="student.train.epochs is not a tuned value") as refused:
        read_tuned(best)
    assert all(key in str(refused.value) for key in TUNED_KEYS)


def test_overrides_inside_free_form_mappings_are_read_as_yaml():
    """``student.model_args.width=1`` builds a student of width 1 (the number), as in a file."""
    config = load_config(None, ["data.dataset=digits", "student.model_args.width=1", "student.model_args.se=true",
                                "distill.params.dkd.beta=8.5", "student.model_args.note=abc"])
    assert config.student.model_args == {"width": 1, "se": True, "note": "abc"}
    assert config.distill.params["dkd"]["beta"] == 8.5
