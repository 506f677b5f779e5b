"""Long synthetic videos for moment retrieval (`dgl make-data synthetic-long`) and `dgl eval --moments` on them,
with a deterministic colour encoder (mean colour of a window -> embedding, the colour named in a text -> that
colour), so the answers are known without a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dgl_deploy.cli import app
from dgl_deploy.data.datasets import load_dataset
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.long_clips import LONG_ANNOTATIONS, make_synthetic_long
from dgl_deploy.data.synthetic import BACKGROUND, COLORS
from dgl_deploy.data.video import decode_frames
from dgl_deploy.data.windows import Segmentation
from dgl_deploy.evaluation.evaluate import evaluate_encoder
from dgl_deploy.evaluation.moments import embed_windows
from dgl_deploy.runtime.device import CPU

runner = CliRunner()


class ColourEncoder:
    """Embeddings = mean colour minus the background; a text = the first colour word in it."""

    backend, frames, image_size, max_words, embed_dim, frame_sampling = "fake", 4, 32, 8, 3, "uniform"
    fingerprint = "colour-1"
    device, precision, manifest, host_check, video_lanes = CPU, "fp32", None, None, 0

    def encode_videos(self, frames: np.ndarray) -> np.ndarray:  # (B, T, S, S, 3) -> (B, 3)
        rows = frames.astype(np.float32).reshape(len(frames), -1, 3).mean(axis=1) - np.float32(BACKGROUND)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        rows = np.array([np.subtract(COLORS[next(w for w in t.split() if w in COLORS)], BACKGROUND) for t in texts],
                        np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def describe(self) -> str:
        return "colour encoder"


@pytest.fixture(scope="module")
def long_set(tmp_path_factory) -> Path:
    """3 videos x 3 events of 2 s (10 fps, 32 px), seed 7."""
    return make_synthetic_long(tmp_path_factory.mktemp("long"), 3, 3, seed=7, size=(32, 32), event_seconds=2.0)


def test_same_seed_same_bytes_and_the_annotations_match_the_frames(long_set, tmp_path) -> None:
    again = make_synthetic_long(tmp_path, 3, 3, seed=7, size=(32, 32), event_seconds=2.0)
    for name in (LONG_ANNOTATIONS, "long_00000.mp4", "long_00002.mp4"):
        assert (again.parent / name).read_bytes() == (long_set.parent / name).read_bytes(), name
    dataset = load_dataset("charades", long_set.parent, long_set.parent)
    assert [len(item.moments) for item in dataset.items] == [3, 3, 3]
    for item in dataset.items:
        assert len({caption for caption, _, _ in item.moments}) == 3  # distinct captions within a video
        for caption, start, end in item.moments:
            assert end - start == pytest.approx(2.0)
            colour = next(w for w in caption.split() if w in COLORS)
            inside = decode_frames(FrameRequest(item.path, 4, 32, (start + 0.1, end - 0.1))).reshape(-1, 3)
            assert (np.abs(inside.astype(int) - COLORS[colour]).sum(axis=1) < 60).any(), (caption, start)
            before = decode_frames(FrameRequest(item.path, 2, 32, (start - 0.8, start - 0.2))).reshape(-1, 3)
            assert (np.abs(before.astype(int) - COLORS[colour]).sum(axis=1) >= 60).all(), (caption, start)


def test_window_rows_keep_the_dataset_order_whatever_order_videos_finish_in(long_set, monkeypatch) -> None:
    """With CPU lanes, `encode_rows` gives videos as they complete, not always in file order: the rows (and so the
    ties of a search) must not depend on it."""
    from dgl_deploy.evaluation import moments

    dataset = load_dataset("charades", long_set.parent, long_set.parent)
    plain = embed_windows(ColourEncoder(), dataset, Segmentation(2.0, 1.0), workers=1, batch_size=4)
    in_order = moments.encode_rows
    monkeypatch.setattr(moments, "encode_rows", lambda *args, **kwargs: reversed(list(in_order(*args, **kwargs))))
    reversed_rows = embed_windows(ColourEncoder(), dataset, Segmentation(2.0, 1.0), workers=1, batch_size=4)
    assert reversed_rows.ids == plain.ids and len(set(plain.ids)) == len(dataset.items)
    np.testing.assert_array_equal(reversed_rows.spans, plain.spans)
    np.testing.assert_array_equal(reversed_rows.vectors, plain.vectors)


def test_eval_moments_with_a_colour_encoder(long_set) -> None:
    dataset = load_dataset("charades", long_set.parent, long_set.parent)
    report = evaluate_encoder(ColourEncoder(), dataset, workers=1, segmentation=Segmentation(2.0, 1.0))
    assert report.moments is not None and report.moments["queries"] == 9
    moments = report.moments
    assert moments["R@5,IoU=0.3"] >= moments["R@1,IoU=0.3"] >= moments["R@1,IoU=0.5"] >= moments["R@1,IoU=0.7"]
    assert moments["R@1,IoU=0.3"] >= 100 * 3 / 9, moments  # at least the videos' distinct colours are found
    assert report.metrics["t2v"]["queries"] == 9  # the whole-video metrics stay


def test_cli_make_data_and_eval_moments(tmp_path, monkeypatch) -> None:
    from dgl_deploy.evaluation import evaluate

    out = tmp_path / "long"
    result = runner.invoke(app, ["make-data", "synthetic-long", str(out), "--videos", "2", "--events", "2",
                                 "--seed", "3", "--size", "32", "--seconds", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / LONG_ANNOTATIONS) and len((out / LONG_ANNOTATIONS).read_text().splitlines()) == 4
    monkeypatch.setattr(evaluate, "open_encoder", lambda *args, **kwargs: ColourEncoder())
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"")
    base = ["eval", "--model", str(model), "--dataset", "charades", "--annotations", str(out), "--videos", str(out),
            "--workers", "1"]
    result = runner.invoke(app, [*base, "--window", "2", "--stride", "1", "--json"])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert set(parsed) == {"t2v", "v2t", "moments"} and parsed["moments"]["queries"] == 4
    assert "R@1,IoU=0.5" in parsed["moments"] and "mIoU" in parsed["moments"]
    result = runner.invoke(app, [*base, "--moments", "--window", "2"])
    assert result.exit_code == 0, result.output
    assert "Text -> moment (--window 2 --stride 2, temporal NMS)" in result.stdout and "mIoU" in result.stdout
    for extra, message in ((["--moments"], "--moments needs --window"), (["--stride", "1"], "--stride needs --window")):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 1 and message in result.output, result.output
