"""The command line itself: help texts, --version, -v on either side of the command."""

from __future__ import annotations

import argparse
import importlib.metadata

import pytest

from kdistill.cli import build_parser, main, package_version, parse_args


def every_parser(parser: argparse.ArgumentParser):
    """The top-level parser and every sub-command's, recursively."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from every_parser(sub)


def test_every_option_of_every_command_has_help_text():
    """An option without help shows as a bare flag in --help; each needs a sentence."""
    missing = [f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
               for parser in every_parser(build_parser()) for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
               and not (action.help or "").strip()]
    assert not missing, f"options without help: {missing}"
    commands = {parser.prog.split()[-1] for parser in every_parser(build_parser())}
    assert {"run", "train", "export", "evaluate", "predict", "bench"} <= commands  # the walk reaches them


def test_top_level_help_is_whole_sentences_without_markup(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and "`" not in text
    description = build_parser().description
    assert description.endswith(".") and "knowledge distillation" in description


def test_run_help_says_what_tuned_uses(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "method's tuned parameters" in text and "alpha, T and lr" not in text


def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"kdistill {package_version()}"
    try:
        assert package_version() == importlib.metadata.version("kdistill")
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        from kdistill import __version__

        assert package_version() == __version__


@pytest.mark.parametrize("argv,verbose", [
    (["doctor", "--data", "x"], False),
    (["-v", "doctor", "--data", "x"], True),
    (["doctor", "--data", "x", "-v"], True),
    (["doctor", "--verbose", "--data", "x"], True),
    (["run", "c.yaml", "a.b=1", "-v"], True),
])
def test_verbose_is_accepted_before_and_after_the_command(argv, verbose):
    assert parse_args(argv).verbose is verbose


def test_evaluate_can_skip_the_speed_timing():
    assert parse_args(["evaluate", "--checkpoint", "c", "--data", "d", "--no-speed"]).no_speed is True
    assert parse_args(["evaluate", "--checkpoint", "c", "--data", "d"]).no_speed is False


def test_evaluate_prints_its_table_on_stdout_and_no_speed_skips_the_timing(tmp_path, capsys):
    """The table is the result (stdout); log lines go to stderr; --no-speed leaves the speed fields null."""
    import json

    from conftest import make_image_folder
    from deploy_helpers import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "ckpt", size=16)
    images = make_image_folder(tmp_path / "data", per_class=4, size=16) / "train"
    out = tmp_path / "results.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(images), "--out", str(out),
                 "--no-speed"]) == 0
    printed = capsys.readouterr()
    assert "| model | role | accuracy % |" in printed.out and "| model |" not in printed.err
    row = json.loads(out.read_text())["models"][0]
    assert row["latency_ms_batch1"] is None and row["throughput_img_s"] is None and row["accuracy"] is not None
