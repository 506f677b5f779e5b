"""The CLI's error boundary: OS errors (full disk, read-only folder) and missing optional packages become one
`error:` line and exit code 1, never a traceback or a chained exception."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dgl_deploy.cli import app
from dgl_deploy.retrieval import embed

runner = CliRunner()


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "No space left on device"),
                                              (errno.EROFS, "Read-only file system")])
def test_os_errors_are_one_line(tmp_path: Path, monkeypatch, tiny_export, code: int, reason: str) -> None:
    target = tmp_path / "out" / "emb.npy"

    def fail(*_, **__):  # noqa: ANN002, ANN003, ANN202
        raise OSError(code, reason, str(target))

    monkeypatch.setattr(embed, "embed_videos", fail)
    (tmp_path / "videos").mkdir()
    result = runner.invoke(app, ["embed", str(tmp_path / "videos"), "--out", str(target), "--model",
                                 str(tiny_export[1]), "--quiet"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {target}: {reason}"), result.output
    assert ("free some space" in lines[0]) == (code == errno.ENOSPC)


def test_missing_optional_package_names_the_extra(tmp_path: Path, monkeypatch, tiny_export) -> None:
    def fail(*_, **__):  # noqa: ANN002, ANN003, ANN202
        raise ModuleNotFoundError("No module named 'faiss'", name="faiss")

    monkeypatch.setattr(embed, "embed_videos", fail)
    result = runner.invoke(app, ["embed", str(tmp_path), "--out", str(tmp_path / "e.npy"), "--model",
                                 str(tiny_export[1]), "--quiet"])
    assert result.exit_code == 1 and result.output.strip() == \
        "error: faiss is not installed (needed for FAISS indexes): pip install 'dgl-deploy[index]'"
