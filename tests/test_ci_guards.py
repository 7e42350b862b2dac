"""The CI switches turn skips into failures: an optional extra or the real data that CI expects
can never silently stop the tests that need it."""

from __future__ import annotations

import pytest

import conftest
from conftest import EXPECTED_SKIP, require_or_skip, require_real_data


def test_missing_extra_skips_by_default(monkeypatch):
    monkeypatch.delenv("KDISTILL_REQUIRE_EXTRAS", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_or_skip("kdistill_no_such_extra")


def test_missing_extra_fails_under_require_extras(monkeypatch):
    monkeypatch.setenv("KDISTILL_REQUIRE_EXTRAS", "1")
    with pytest.raises(ImportError):
        require_or_skip("kdistill_no_such_extra")
    assert require_or_skip("json").dumps([1]) == "[1]"  # a present module is returned


def test_missing_real_data_is_an_expected_skip_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("KDISTILL_REQUIRE_REAL_DATA", raising=False)
    monkeypatch.setattr(conftest, "REAL_DATA", tmp_path / "absent")
    with pytest.raises(pytest.skip.Exception, match=EXPECTED_SKIP):
        require_real_data()


def test_missing_real_data_fails_under_require_real_data(monkeypatch, tmp_path):
    monkeypatch.setenv("KDISTILL_REQUIRE_REAL_DATA", "1")
    monkeypatch.setattr(conftest, "REAL_DATA", tmp_path / "absent")
    with pytest.raises(pytest.fail.Exception, match="KDISTILL_REQUIRE_REAL_DATA"):
        require_real_data()
    (tmp_path / "absent" / "train").mkdir(parents=True)
    assert require_real_data() == tmp_path / "absent"
