"""`dgl train` then `dgl eval --model` through the CLI (tiny model, synthetic data)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from dgl_deploy.cli import app
from dgl_deploy.data.synthetic import make_synthetic


def test_train_then_eval(tmp_path: Path) -> None:
    annotations = make_synthetic(tmp_path / "data", videos=8, seed=1)
    videos, run = str(tmp_path / "data"), tmp_path / "run"
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"frames": 4, "max_words": 16, "batch_size": 4, "epochs": 1}))
    result = CliRunner().invoke(app, [
        "train", "--model-name", "dgl-tiny", "--pretrained", "none", "--dataset", "generic",
        "--annotations", str(annotations), "--videos", videos, "--out", str(run), "--config", str(config),
        "--epochs", "2", "--lr", "1e-3", "--workers", "2", "--latent", "linear", "--val-fraction", "0.25",
    ])
    assert result.exit_code == 0, result.output
    assert (run / "model.safetensors").is_file() and (run / "state.pt").is_file() and (run / "epoch_2.safetensors").is_file()
    saved = json.loads((run / "config.json").read_text())
    assert (saved["epochs"], saved["frames"], saved["latent"], saved["pretrained"]) == (2, 4, "linear", None)
    events = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert events.count("step") == 2 * 2 and events.count("epoch") == 2 and events[-1] == "done"

    result = CliRunner().invoke(app, ["eval", "--model", str(run / "model.safetensors"), "--dataset", "generic",
                                      "--annotations", str(annotations), "--videos", videos, "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["t2v"]["queries"] == 24 and metrics["v2t"]["queries"] == 8


def test_eval_needs_exactly_one_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval"])
    assert result.exit_code == 1 and "exactly one of --sims" in result.output
    result = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 1 and "--model needs --dataset" in result.output


def test_train_bad_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("epochs = [")
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and result.output.startswith(f"error: {config}: invalid TOML")
