"""`dgl import-checkpoint` and `dgl info` through Typer's CliRunner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dgl_deploy.cli import app
from tests.conftest import golden_case

runner = CliRunner()


def test_import_then_info(tmp_path) -> None:
    pth, cfg, _ = golden_case("linear")
    out = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["import-checkpoint", str(pth), "--out", str(out), "--frames", str(cfg["frames"]),
                                 "--max-words", str(cfg["max_words"])])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["config"]["latent"] == "linear" and data["config"]["frames"] == cfg["frames"]
    assert 0 < data["trainable_parameters"] < data["total_parameters"]
    assert "trainable" in runner.invoke(app, ["info", str(out)]).stdout


def test_bad_checkpoint_is_one_line(tmp_path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_text("nope")
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "x.safetensors" in result.stderr
    assert "Traceback" not in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "dgl-deploy" in result.stdout
