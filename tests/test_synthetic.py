"""Synthetic moving-shape data: determinism, metadata, captions, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
from typer.testing import CliRunner

from dgl_deploy.cli import app
from dgl_deploy.data.synthetic import frame_caption, make_synthetic


def rows(annotations: Path) -> list[dict]:
    return [json.loads(line) for line in annotations.read_text().splitlines()]


def test_deterministic_real_h264_with_metadata(tmp_path: Path) -> None:
    a = rows(make_synthetic(tmp_path / "a", videos=6, seed=7))
    b = rows(make_synthetic(tmp_path / "b", videos=6, seed=7))
    c = rows(make_synthetic(tmp_path / "c", videos=6, seed=8))
    assert a == b and a != c
    assert (tmp_path / "a" / "vid_00000.mp4").read_bytes() == (tmp_path / "b" / "vid_00000.mp4").read_bytes()
    with av.open(str(tmp_path / "a" / "vid_00000.mp4")) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert stream.codec_context.name == "h264" and (stream.width, stream.height) == (64, 64)
    row = a[0]
    assert len(frames) == row["meta"]["num_frames"] == 20 and row["meta"]["fps"] == 10
    assert row["video"] == "vid_00000.mp4" and len(row["caption"]) == 3
    assert row["meta"]["color"] in row["caption"][0] and row["meta"]["shape"] in row["caption"][0]


def test_motion_captions_and_frame_captions() -> None:
    meta = {"shape": "circle", "color": "red", "direction": "right", "start": [10, 32], "end": [54, 32], "size": [64, 64]}
    assert frame_caption(meta, 0.0) == "a red circle on the left"
    assert frame_caption(meta, 0.5) == "a red circle in the centre"
    assert frame_caption(meta, 1.0) == "a red circle on the right"
    up = dict(meta, direction="up", start=[10, 54], end=[10, 10])
    assert frame_caption(up, 0.0) == "a red circle at the bottom left"
    assert frame_caption(up, 1.0) == "a red circle at the top left"


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    """Every file of three runs with one seed is byte-identical (libx264's lookahead made some clips differ)."""
    runs = [digests(make_synthetic(tmp_path / str(run), videos=36, seed=0).parent) for run in range(3)]
    assert len(runs[0]) == 37 and runs[0] == runs[1] == runs[2]


def test_cli_make_data_synthetic(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["make-data", "synthetic", str(tmp_path / "out"), "--videos", "3", "--seed", "4", "--broken"])
    assert result.exit_code == 0, result.output
    assert len(rows(tmp_path / "out" / "annotations.jsonl")) == 3
    assert (tmp_path / "out" / "broken" / "empty.mp4").exists()
    odd = CliRunner().invoke(app, ["make-data", "synthetic", str(tmp_path / "odd"), "--size", "33"])
    assert odd.exit_code == 1 and "must be even" in odd.output
