"""The golden/reference tests cannot pass by skipping: `require_shared` fails, naming the missing path and
$DGL_SHARED_DIR, wherever a fixture under shared/ is absent (no environment variable needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REFERENCE, require_shared


def test_missing_fixture_fails_and_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DGL_REQUIRE_SHARED", raising=False)
    missing = tmp_path / "reference" / "absent.npy"
    with pytest.raises(pytest.fail.Exception) as failed:
        require_shared(missing)
    assert str(missing) in str(failed.value) and "$DGL_SHARED_DIR" in str(failed.value)


def test_present_fixture_is_returned() -> None:
    assert require_shared(REFERENCE) == REFERENCE
