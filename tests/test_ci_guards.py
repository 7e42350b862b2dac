"""The CI switches turn skips into failures: an optional extra or the real data that CI expects
can never silently stop the tests that need it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import conftest
from conftest import EXPECTED_SKIP, require_or_skip, require_real_data


def outcome(call: Callable[[], object]) -> tuple[str, str]:
    """What ``call`` did: ("returned" | "skipped" | "failed" | an exception's type name, message).
    A skip or failure is caught here, so it cannot become this test's own outcome."""
    try:
        call()
    except pytest.skip.Exception as exc:
        return "skipped", str(exc)
    except pytest.fail.Exception as exc:
        return "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        return type(exc).__name__, str(exc)
    return "returned", ""


def test_missing_extra_skips_by_default(monkeypatch):
    monkeypatch.delenv("KDISTILL_REQUIRE_EXTRAS", raising=False)
    assert outcome(lambda: require_or_skip("kdistill_no_such_extra"))[0] == "skipped"


def test_missing_extra_fails_under_require_extras(monkeypatch):
    monkeypatch.setenv("KDISTILL_REQUIRE_EXTRAS", "1")
    assert outcome(lambda: require_or_skip("kdistill_no_such_extra"))[0] == "ModuleNotFoundError"
    assert require_or_skip("json").dumps([1]) == "[1]"  # a present module is returned


def test_missing_real_data_is_an_expected_skip_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("KDISTILL_REQUIRE_REAL_DATA", raising=False)
    monkeypatch.setattr(conftest, "REAL_DATA", tmp_path / "absent")
    kind, message = outcome(require_real_data)
    assert kind == "skipped" and message.startswith(EXPECTED_SKIP)


def test_missing_real_data_fails_under_require_real_data(monkeypatch, tmp_path):
    monkeypatch.setenv("KDISTILL_REQUIRE_REAL_DATA", "1")
    monkeypatch.setattr(conftest, "REAL_DATA", tmp_path / "absent")
    kind, message = outcome(require_real_data)
    assert kind == "failed" and "KDISTILL_REQUIRE_REAL_DATA" in message
    (tmp_path / "absent" / "train").mkdir(parents=True)
    assert require_real_data() == tmp_path / "absent"


def run_pytest_on(tmp_path, source: str) -> subprocess.CompletedProcess:
    """Run pytest, as CI does (KDISTILL_FAIL_ON_UNEXPECTED_SKIP=1), on one generated test file
    with this suite's conftest loaded as a plugin."""
    (tmp_path / "test_generated.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(Path(conftest.__file__).parent),
           "KDISTILL_FAIL_ON_UNEXPECTED_SKIP": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "conftest", "-p", "no:cacheprovider",
                           "test_generated.py"], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_unexpected_skip_fails_the_run_under_the_ci_switch(tmp_path):
    source = ("import pytest\n"
              "def test_gone():\n    pytest.skip('silently gone')\n"
              f"def test_known():\n    pytest.skip({EXPECTED_SKIP!r} + 'no data here')\n")
    strict = run_pytest_on(tmp_path, source)
    assert strict.returncode == 1, strict.stdout
    assert "unexpected skips (1)" in strict.stdout and "test_gone" in strict.stdout
    assert "test_known" not in strict.stdout.split("unexpected skips")[1]


def test_expected_skips_alone_pass_under_the_ci_switch(tmp_path):
    source = f"import pytest\ndef test_known():\n    pytest.skip({EXPECTED_SKIP!r} + 'no data here')\n"
    assert run_pytest_on(tmp_path, source).returncode == 0
