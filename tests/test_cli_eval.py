"""`dgl eval --sims`: rich table, --json, re-rank rows, and one-line errors with exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dgl_deploy.cli import app
from tests.conftest import REFERENCE as SHARED_REFERENCE
from tests.conftest import require_shared

REFERENCE = SHARED_REFERENCE / "msrvtt_1k_dgl_vit16_sims.npy"
SIMS = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.2], [0.3, 0.6, 0.4]], dtype=np.float32)


def _save(tmp_path: Path, name: str, array: np.ndarray) -> str:
    path = tmp_path / name
    np.save(path, array)
    return str(path)


def _invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def test_table(tmp_path: Path) -> None:
    result = _invoke("--sims", _save(tmp_path, "sims.npy", SIMS))
    assert result.exit_code == 0, result.output
    assert "t2v" in result.stdout and "v2t" in result.stdout and "33.3" in result.stdout


def test_json_multi_caption(tmp_path: Path) -> None:
    sims = np.array([[0.9, 0.2, 0.1], [0.3, 0.6, 0.4], [0.5, 0.5, 0.1], [0.2, 0.55, 0.3], [0.7, 0.1, 0.6]])
    mapping = _save(tmp_path, "c2v.npy", np.array([0, 0, 1, 1, 2]))
    result = _invoke("--sims", _save(tmp_path, "sims.npy", sims), "--captions-to-videos", mapping, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["t2v"] == {"R@1": 40.0, "R@5": 100.0, "R@10": 100.0, "MdR": 2.0, "MnR": 1.8, "queries": 5}
    assert data["v2t"]["MnR"] == 4 / 3 and data["v2t"]["queries"] == 3


def test_json_with_dsl_rows(tmp_path: Path) -> None:
    result = _invoke("--sims", _save(tmp_path, "sims.npy", SIMS), "--rerank", "dsl", "--json")
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)) == ["t2v", "t2v +DSL", "v2t", "v2t +DSL"]


def test_qbnorm_with_query_bank_table(tmp_path: Path) -> None:
    bank = _save(tmp_path, "bank.npy", SIMS[[0, 1]])
    result = _invoke("--sims", _save(tmp_path, "sims.npy", SIMS), "--rerank", "qbnorm", "--query-bank", bank)
    assert result.exit_code == 0, result.output
    assert "QB-Norm" in result.stdout


def test_reference_json() -> None:
    result = _invoke("--sims", str(require_shared(REFERENCE)), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["t2v"] == {"R@1": 48.0, "R@5": 71.3, "R@10": 81.4, "MdR": 2.0, "MnR": 13.649, "queries": 1000}
    assert data["v2t"]["R@1"] == 46.5 and data["v2t"]["MnR"] == 9.791


def _bad_text_file(tmp_path: Path) -> str:
    path = tmp_path / "sims.npy"
    path.write_text("not an array\n")
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda p: ["--sims", str(p / "missing.npy")], "not found"),
        (lambda p: ["--sims", _bad_text_file(p)], "not a readable .npy array"),
        (lambda p: ["--sims", _save(p, "obj.npy", np.array([{"a": 1}], dtype=object))], "not a readable .npy array"),
        (lambda p: ["--sims", _save(p, "vec.npy", np.zeros(3))], "2-D"),
        (lambda p: ["--sims", _save(p, "int.npy", np.zeros((2, 2), dtype=np.int32))], "floating-point"),
        (lambda p: ["--sims", _save(p, "rect.npy", np.zeros((2, 3)))], "not square"),
        (lambda p: ["--sims", _save(p, "s.npy", SIMS), "--rerank", "qbnorm"], "needs a query bank"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, make_args, message: str) -> None:
    result = _invoke(*make_args(tmp_path))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_model_must_be_a_checkpoint_or_an_export_folder(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text("{}")
    (tmp_path / "export" / "video.onnx").write_bytes(b"onnx")
    result = _invoke("--model", str(tmp_path / "export" / "video.onnx"), "--dataset", "generic",
                     "--annotations", str(tmp_path / "a.csv"), "--videos", str(tmp_path))
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "must be a checkpoint file (.safetensors/.pth) or an export folder containing manifest.json" in result.output
    assert f"({tmp_path / 'export'} is one: pass it); a .onnx file alone is not enough" in result.output
