"""`dgl train` then `dgl eval --model` through the CLI (tiny model, synthetic data)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dgl_deploy.cli import app
from dgl_deploy.data.synthetic import make_synthetic


def test_train_then_eval(tmp_path: Path) -> None:
    annotations = make_synthetic(tmp_path / "data", videos=8, seed=1)
    with annotations.open("a") as handle:  # an annotated video whose file is missing: --skip-missing leaves it out
        handle.write(json.dumps({"video": "gone.mp4", "caption": "a lost clip"}) + "\n")
    videos, run = str(tmp_path / "data"), tmp_path / "run"
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"frames": 4, "max_words": 16, "batch_size": 4, "epochs": 1}))
    result = CliRunner().invoke(app, [
        "train", "--model-name", "dgl-tiny", "--pretrained", "none", "--dataset", "generic",
        "--annotations", str(annotations), "--videos", videos, "--out", str(run), "--config", str(config),
        "--epochs", "2", "--lr", "1e-3", "--workers", "2", "--latent", "linear", "--val-fraction", "0.25",
        "--skip-missing", "--quiet", "--frame-sampling", "reference",
    ])
    assert result.exit_code == 0, result.output
    missing = r"^warning: .*annotations\.jsonl: 1 of 9 videos not found under .* \(gone\.mp4\); skipping them$"
    assert re.search(missing, result.stderr, re.M), result.stderr
    assert re.search(r"epoch 2/2: loss \d+\.\d+, val t2v R@1 \d+\.\d, 0:\d\d:\d\d elapsed, ETA 0:00:00", result.stderr)
    assert "step 1/" not in result.stderr  # --quiet: per-epoch lines only
    assert (run / "model.safetensors").is_file() and (run / "state.pt").is_file() and (run / "epoch_2.safetensors").is_file()
    saved = json.loads((run / "config.json").read_text())
    assert (saved["epochs"], saved["frames"], saved["latent"], saved["pretrained"]) == (2, 4, "linear", None)
    assert saved["frame_sampling"] == "reference"
    events = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert events.count("step") == 2 * 2 and events.count("epoch") == 2 and events[-1] == "done"

    result = CliRunner().invoke(app, ["eval", "--model", str(run / "model.safetensors"), "--dataset", "generic",
                                      "--annotations", str(annotations), "--videos", videos, "--workers", "2",
                                      "--json", "--skip-missing", "--frame-sampling", "reference"])
    assert result.exit_code == 0, result.output
    assert re.search(missing, result.stderr, re.M), result.stderr
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


BAD_ANNOTATIONS = [
    ("a.jsonl", '{"video": "a.mp4", "caption": "x"}\n{"video": "a.mp4", "caption": null}\n', "a.jsonl line 2: 'caption' must be a string, got null"),
    ("a.jsonl", '{"video": "a.mp4", "caption": "x"}\n["a.mp4", "y"]\n', "a.jsonl line 2: expected an object, got an array"),
    ("a.jsonl", '{"video": "a.mp4", "caption": "x", "start": "abc", "end": 1}\n', "a.jsonl line 1: 'start' must be a number"),
    ("a.csv", "video,caption\na.mp4,x\na.mp4\n", "a.csv line 3: 1 field(s) where the header has 2"),
    ("a.csv", 'video,caption\na.mp4,"x\na.mp4,y\n', "a.csv line 2: a quote opened here is still open at line 3"),
    ("a.csv", "video,caption\nb.mp4,x\n", "a.csv: 1 of 1 videos not found under {tmp}(b.mp4); fix the videos path or skip them "
                                          "(skip_missing=True / --skip-missing)"),
]


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize(("name", "text", "message"), BAD_ANNOTATIONS)
def test_bad_annotations_are_one_line(tmp_path: Path, command: str, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    (tmp_path / "a.mp4").touch()
    (tmp_path / "m.safetensors").touch()
    source = ["--out", str(tmp_path / "run")] if command == "train" else ["--model", str(tmp_path / "m.safetensors")]
    result = CliRunner().invoke(app, [command, *source, "--dataset", "generic", "--annotations", str(tmp_path / name),
                                      "--videos", str(tmp_path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "Traceback" not in result.output
    message = message.format(tmp=f"{tmp_path} ")
    assert result.output.startswith(f"error: {tmp_path}") and message in result.output, result.output
